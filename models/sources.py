"""What one export publishes, whatever it came from: a torchvision/Lite variant, a timm checkpoint or an
imported ONNX file. `models.pipeline.publish` turns a `Source` into repository versions (fp32 and the
derived precisions); the source only knows how to write its own fp32 and fp16 graphs.
"""

from __future__ import annotations

import copy
import importlib.metadata
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from models.architectures import PixelClassifier, Preprocessing
from models.graph import OPSET, Reference, export_onnx, reference_run, verify
from service.model_spec import DeclaredAccuracy, Precision, WeightsProvenance


class Graphs(Protocol):
    """Writes the graphs of one model: uint8 `pixels` in, float32 `logits` and `probabilities` out."""

    def fp32(self, path: Path) -> float:
        """Write the fp32 graph and check it against its source; return the relative logit error."""
        ...

    def fp16(self, path: Path) -> None:
        """Write the fp16 graph (float16 inside, same interface); the agreement gate checks it."""
        ...


@dataclass(frozen=True)
class Source:
    key: str  # model.json `variant`
    architecture: str
    pre: Preprocessing
    classes: int
    labels: list[str]
    weights: WeightsProvenance
    parameters: int
    gmacs: float
    exporter: dict[str, str]  # package versions and how the graph was made
    graphs: Graphs
    accuracy: Callable[[Precision], DeclaredAccuracy | None]
    opset: int = OPSET


class TorchGraphs:
    """A torch classifier (float input, normalised) behind our uint8 front, exported with torch's exporter."""

    def __init__(self, classifier: nn.Module, pre: Preprocessing) -> None:
        self._classifier = classifier
        self._pre = pre
        self.module = PixelClassifier(copy.deepcopy(classifier), pre.mean, pre.std).eval()
        self.reference: Reference = reference_run(self.module, pre.crop_size)

    @property
    def gmacs(self) -> float:
        return round(self.reference.macs / 1e9, 4)

    def fp32(self, path: Path) -> float:
        export_onnx(self.module, self._pre.crop_size, path)
        return verify(path, self.reference)

    def fp16(self, path: Path) -> None:
        pre = self._pre
        half = PixelClassifier(copy.deepcopy(self._classifier), pre.mean, pre.std, half=True).eval()
        export_onnx(half, pre.crop_size, path)


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """Python and the installed versions of `packages` (those not installed are left out)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def torch_exporter_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    versions = package_versions(["torch", "torchvision", *extra, "onnx", "onnxruntime-gpu", "onnxscript"])
    import onnxruntime
    import torch

    # Keep the keys earlier model.json files have (torch's local version suffix, onnxruntime's name).
    versions["torch"] = torch.__version__
    versions["onnxruntime"] = onnxruntime.__version__
    versions.pop("onnxruntime-gpu", None)
    versions["exporter"] = "torch.onnx.export(dynamo=True)"
    return versions
