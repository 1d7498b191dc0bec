"""One export, end to end: weights -> torch module -> verified ONNX -> atomically published version.

`models.export` is the CLI and the small public API around this.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.architectures import (
    IMAGENET_CLASSES,
    PixelClassifier,
    architecture_name,
    build_classifier,
    imagenet_categories,
    parameter_count,
    preprocessing,
)
from models.errors import ExportError
from models.graph import OPSET, OUTPUT_NAMES, export_onnx, reference_run, verify
from models.repository import prepare, staged_version
from models.variants import UnknownVariant, Variant, get_variant
from models.weights import DEFAULT_SEED, Weights, WeightsResolver, load_into, sha256_file
from service.model_spec import (
    LABELS_FILE,
    MODEL_FILE,
    MODEL_NAME_PATTERN,
    SPEC_FILE,
    ModelSpec,
    Normalization,
    TensorSpec,
)

Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the version directory
    spec: ModelSpec
    seconds: float
    onnx_bytes: int
    verify_error: float  # max |ONNX - torch| / max |torch| on the logits, batch 1


def _read_labels(path: Path) -> list[str]:
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read labels {path}: {e}") from None
    labels = [label for label in labels if label]
    if not labels:
        raise ExportError(f"labels file {path} is empty")
    return labels


def _classes_and_labels(
    weights: Weights, num_classes: int | None, labels_file: Path | None
) -> tuple[int, list[str] | None]:
    labels = _read_labels(labels_file) if labels_file is not None else None
    if num_classes is not None and num_classes <= 0:
        raise ExportError(f"--num-classes must be positive, got {num_classes}")
    if num_classes is not None and labels is not None and len(labels) != num_classes:
        raise ExportError(f"{labels_file} has {len(labels)} labels but --num-classes is {num_classes}")
    classes = num_classes or (len(labels) if labels else None) or weights.num_classes() or IMAGENET_CLASSES
    if weights.provenance.kind == "imagenet" and classes != IMAGENET_CLASSES:
        raise ExportError(
            f"ImageNet weights have {IMAGENET_CLASSES} classes, not {classes}; "
            "use --weights PATH (your fine-tuned checkpoint) or --weights random"
        )
    if labels is None and classes != IMAGENET_CLASSES:
        raise ExportError(f"a {classes}-class model needs --labels FILE (one class name per line)")
    return classes, labels


def _exporter_versions(variant: Variant) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "exporter": "torch.onnx.export(dynamo=True)",
    }
    packages = ["onnxscript"] + (["efficientnet-lite-pytorch"] if variant.family == "lite" else [])
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def export(
    variant: str,
    repository: Path,
    weights: str = "default",
    version: int = 1,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    labels: Path | None = None,
    seed: int = DEFAULT_SEED,
    resolver: WeightsResolver | None = None,
    step: Step | None = None,
) -> ExportResult:
    """Export one variant; see `export_variant`. `resolver` is shared to warn about fallbacks once."""
    started = time.monotonic()
    say = step or (lambda _msg: None)
    try:
        spec_variant = get_variant(variant)
    except UnknownVariant as e:
        raise ExportError(str(e)) from None
    name = name or spec_variant.key
    if not MODEL_NAME_PATTERN.match(name):
        raise ExportError(f"model name {name!r} must match {MODEL_NAME_PATTERN.pattern}")
    if version < 1:
        raise ExportError(f"version must be at least 1, got {version}")
    prepare(repository)
    resolver = resolver or WeightsResolver(seed=seed)

    say("loading weights")
    loaded = resolver.resolve(weights, spec_variant)
    classes, label_list = _classes_and_labels(loaded, num_classes, labels)
    if label_list is None:
        label_list = imagenet_categories(spec_variant)

    say("building model")
    torch.manual_seed(loaded.seed)
    classifier = build_classifier(spec_variant, classes)
    if loaded.state_dict is not None:
        load_into(classifier, loaded.state_dict, loaded.provenance.source or weights)
    pre = preprocessing(spec_variant)
    module = PixelClassifier(classifier, pre.mean, pre.std).eval()
    reference = reference_run(module, pre.crop_size)

    with staged_version(repository, name, version) as staging:
        say("exporting ONNX")
        onnx_path = staging / MODEL_FILE
        export_onnx(module, pre.crop_size, onnx_path)
        say("verifying with ONNX Runtime")
        error = verify(onnx_path, reference)
        (staging / LABELS_FILE).write_text("\n".join(label_list) + "\n", encoding="utf-8")
        spec = ModelSpec(
            name=name,
            version=version,
            variant=spec_variant.key,
            architecture=architecture_name(spec_variant),
            crop_size=pre.crop_size,
            resize_size=pre.resize_size,
            interpolation=pre.interpolation,  # type: ignore[arg-type]
            normalization=Normalization(mean=pre.mean, std=pre.std),
            inputs=(TensorSpec(name="pixels", dtype="uint8", shape=(-1, 3, pre.crop_size, pre.crop_size)),),
            outputs=tuple(TensorSpec(name=n, dtype="float32", shape=(-1, classes)) for n in OUTPUT_NAMES),
            num_classes=classes,
            weights=loaded.provenance,
            parameters=parameter_count(classifier),
            gmacs=round(reference.macs / 1e9, 4),
            opset=OPSET,
            exporter=_exporter_versions(spec_variant),
            onnx_sha256=sha256_file(onnx_path),
        )
        (staging / SPEC_FILE).write_text(spec.to_json(), encoding="utf-8")
        onnx_bytes = onnx_path.stat().st_size
    return ExportResult(
        path=repository / name / str(version),
        spec=spec,
        seconds=time.monotonic() - started,
        onnx_bytes=onnx_bytes,
        verify_error=error,
    )
