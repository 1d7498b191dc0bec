"""The model repository's metadata format (`model.json`), shared by the exporter and the service.

The exporter writes it, the service validates it on load and trusts nothing else: preprocessing is
driven by these fields, never by a model's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# 2 added precision, derived_from, agreement and accuracy (all optional: version 1 files stay valid).
# 3 adds `measured` (optional); files are written as 3 only when they carry it, so a server that knows
# only 1 and 2 keeps reading every file that does not.
SCHEMA_VERSION: Final = 2
MEASURED_SCHEMA_VERSION: Final = 3
MODEL_FILE = "model.onnx"
SPEC_FILE = "model.json"
LABELS_FILE = "labels.txt"

# Model names double as URL parameters and directory names; keep them boring.
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

Interpolation = Literal["nearest", "bilinear", "bicubic"]
TensorDType = Literal["uint8", "float32", "float16", "int64"]
# Outputs whose dtype is not float32 (the class ids the activation maps belong to).
INT64_OUTPUTS: Final = frozenset({"cam_classes"})
Precision = Literal["fp32", "fp16", "int8"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One graph input or output. A dimension of -1 is dynamic (the batch axis)."""

    name: str
    dtype: TensorDType
    shape: tuple[int, ...]


class WeightsProvenance(_Frozen):
    """Where the weights came from, recorded at export time and never guessed later.

    - ``imagenet``: published ImageNet-trained weights; ``source`` names them, ``sha256`` is the
      checkpoint file's digest.
    - ``custom``: a user's local checkpoint (``source`` is its file name); ``sha256`` its digest.
    - ``imported``: an ONNX classifier imported as it was (``source`` its file name, ``sha256`` the digest
      of that file, before our uint8 front was added).
    - ``random``: random initialisation with ``seed``; fit for shape, speed and protocol tests only.
    """

    kind: Literal["imagenet", "custom", "imported", "random"]
    source: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    seed: int | None = None

    @model_validator(mode="after")
    def _complete(self) -> WeightsProvenance:
        if self.kind == "random" and self.seed is None:
            raise ValueError("random weights must record their seed")
        if self.kind != "random" and (self.source is None or self.sha256 is None):
            raise ValueError(f"{self.kind} weights must record source and sha256")
        return self


class Normalization(_Frozen):
    """What the graph does to pixels scaled to [0, 1]: (x - mean) / std per channel (RGB).

    Informational: the graph applies it itself, so clients and the service send raw uint8.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class DerivedFrom(_Frozen):
    """The fp32 model a lower-precision graph was made from (same weights, same preprocessing)."""

    name: str
    version: int = Field(ge=1)
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Agreement(_Frozen):
    """How a lower-precision graph agrees with its fp32 source, measured at export time.

    Measured on the exporter's real-photo set (scikit-image photos plus deterministic crops and flips,
    preprocessed as the service does). For random weights only ``max_abs_logit_delta`` is meaningful
    and the label figures are left out.
    """

    images: int = Field(gt=0)
    image_set: str = Field(description="what the images were")
    top1_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    max_abs_probability_delta: float | None = Field(default=None, ge=0.0)
    max_abs_logit_delta: float = Field(ge=0.0)
    confident_images: int | None = Field(default=None, ge=0, description="images fp32 gives p >= 0.5")
    confident_top1_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    gate: str = Field(description="the rule the export had to pass")


class DeclaredAccuracy(_Frozen):
    """The ImageNet top-1 the weights were published with, and where that figure comes from."""

    imagenet_top1: float = Field(gt=0.0, le=100.0, description="percent")
    source: str


class MeasuredAccuracy(_Frozen):
    """Top-1/top-5 measured on someone's own labelled photos (`python -m models.measure`), beside the
    published figure. `auto` prefers it (service/core/routing.py)."""

    dataset: str = Field(min_length=1, description="the name the measurer gave the photo set")
    images: int = Field(gt=0)
    top1: float = Field(ge=0.0, le=100.0, description="percent")
    top5: float | None = Field(default=None, ge=0.0, le=100.0, description="percent")
    measured_at: str | None = Field(default=None, description="UTC time, ISO 8601")
    how: str | None = Field(default=None, description="what ran the photos (tool, runtime, preprocessing)")


class ModelSpec(_Frozen):
    """Contents of `model.json`, schema versions 1 to 3 (2 adds the optional precision fields, 3 the
    measured accuracy)."""

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    name: str = Field(pattern=MODEL_NAME_PATTERN.pattern)
    version: int = Field(ge=1)
    variant: str
    architecture: str
    crop_size: int = Field(gt=0, le=4096)
    resize_size: int = Field(gt=0, le=4096)
    interpolation: Interpolation
    normalization: Normalization
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_classes: int = Field(gt=0)
    weights: WeightsProvenance
    parameters: int = Field(gt=0)
    gmacs: float = Field(gt=0, description="multiply-accumulates at crop size, batch 1, in 1e9")
    opset: int = Field(gt=0)
    exporter: dict[str, str] = Field(description="package versions used to export")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: Precision = Field(default="fp32", description="arithmetic inside the graph")
    derived_from: DerivedFrom | None = Field(default=None, description="fp32 source of an fp16/int8 graph")
    agreement: Agreement | None = Field(default=None, description="export-time agreement with derived_from")
    accuracy: DeclaredAccuracy | None = Field(
        default=None, description="published ImageNet top-1 of these weights; null when none is known"
    )
    measured: MeasuredAccuracy | None = Field(
        default=None, description="top-1/top-5 measured on the operator's own labelled photos"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.resize_size < self.crop_size:
            raise ValueError("resize_size must be at least crop_size")
        if len(self.inputs) != 1:
            raise ValueError("exactly one graph input is supported")
        pixels = self.inputs[0]
        expected = (-1, 3, self.crop_size, self.crop_size)
        if pixels.dtype != "uint8" or pixels.shape != expected:
            raise ValueError(f"input must be uint8 {expected}, got {pixels.dtype} {pixels.shape}")
        names = {o.name for o in self.outputs}
        if not {"logits", "probabilities"} <= names:
            raise ValueError("outputs must include 'logits' and 'probabilities'")
        return self

    @model_validator(mode="after")
    def _precision_keeps_the_interface(self) -> ModelSpec:
        """Whatever runs inside, clients see the same graph: uint8 `pixels` in, float32 out (int64 for
        the class ids of the activation maps)."""
        if self.inputs[0].name != "pixels":
            raise ValueError(f"the graph input must be named 'pixels', got {self.inputs[0].name!r}")
        wrong = [
            f"{o.name} {o.dtype}"
            for o in self.outputs
            if o.dtype != ("int64" if o.name in INT64_OUTPUTS else "float32")
        ]
        if wrong:
            raise ValueError(f"{self.precision} model outputs must be float32, got {', '.join(wrong)}")
        if self.precision == "fp32":
            if self.derived_from is not None or self.agreement is not None:
                raise ValueError("an fp32 model has no derived_from or agreement")
        elif self.derived_from is None or self.agreement is None:
            raise ValueError(f"a {self.precision} model must record derived_from and agreement")
        if self.schema_version == 1 and (self.precision != "fp32" or self.accuracy is not None):
            raise ValueError("precision and accuracy need schema_version 2")
        if self.measured is not None and self.schema_version < MEASURED_SCHEMA_VERSION:
            raise ValueError(f"a measured accuracy needs schema_version {MEASURED_SCHEMA_VERSION}")
        return self

    def with_measured(self, measured: MeasuredAccuracy) -> ModelSpec:
        """This spec with `measured` recorded (replacing an earlier one), at the schema that carries it."""
        return self.model_copy(update={"measured": measured, "schema_version": MEASURED_SCHEMA_VERSION})

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def to_json(self) -> str:
        # `measured` is left out when absent: a file without it stays readable by schema-2 servers.
        return self.model_dump_json(indent=2, exclude={"measured"} if self.measured is None else None) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> ModelSpec:
        return cls.model_validate_json(path.read_bytes())


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One label per line, exactly `num_classes` of them."""
    labels = path.read_text(encoding="utf-8").splitlines()
    if len(labels) != num_classes:
        raise ValueError(f"{path} has {len(labels)} labels, model has {num_classes} classes")
    return labels
