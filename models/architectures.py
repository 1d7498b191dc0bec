"""Build the torch modules: the bare classifier per variant and the uint8-in graph wrapper we export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.variants import LITE_CROP_PADDING, LITE_MEAN, LITE_STD, Variant

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Preprocessing:
    crop_size: int
    resize_size: int
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    mean: tuple[float, float, float]  # in [0, 1] pixel units
    std: tuple[float, float, float]


def _tv_weights(variant: Variant) -> WeightsEnum:
    from torchvision.models import get_model_weights

    # DEFAULT is V2 for B1 (different resize and interpolation); we pin V1 for every variant.
    return get_model_weights(variant.builder).IMAGENET1K_V1


def preprocessing(variant: Variant) -> Preprocessing:
    """The eval-time transform the variant's weights were validated with (torchvision IMAGENET1K_V1)."""
    if variant.family == "lite":
        assert variant.lite_crop is not None
        crop = variant.lite_crop
        return Preprocessing(crop, crop + LITE_CROP_PADDING, "bicubic", LITE_MEAN, LITE_STD)
    transforms = _tv_weights(variant).transforms()
    return Preprocessing(
        crop_size=int(transforms.crop_size[0]),
        resize_size=int(transforms.resize_size[0]),
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )


def imagenet_categories(variant: Variant) -> list[str]:
    """ImageNet-1k class names from torchvision's weights meta (no download); Lite uses the same order."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_checkpoint_url(variant: Variant) -> str:
    return str(_tv_weights(variant).url)


def torchvision_top1(variant: Variant) -> float:
    """torchvision's published ImageNet acc@1 of the IMAGENET1K_V1 weights (from its meta, no download)."""
    return float(_tv_weights(variant).meta["_metrics"]["ImageNet-1K"]["acc@1"])


def build_classifier(variant: Variant, num_classes: int = IMAGENET_CLASSES) -> nn.Module:
    """The architecture with freshly initialised weights (seed them before calling), in eval mode."""
    if variant.family == "lite":
        from efficientnet_lite_pytorch import EfficientNet

        model: nn.Module = EfficientNet.from_name(variant.builder, num_classes=num_classes)
    else:
        import torchvision.models

        model = getattr(torchvision.models, variant.builder)(weights=None, num_classes=num_classes)
    return model.eval()


def architecture_name(variant: Variant) -> str:
    if variant.family == "lite":
        return f"efficientnet_lite_pytorch.EfficientNet.from_name('{variant.builder}')"
    return f"torchvision.models.{variant.builder}"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PixelClassifier(nn.Module):
    """uint8 pixels (N, 3, H, W) -> (logits, probabilities); the graph does the normalisation itself.

    With `half=True` the classifier runs in float16 (its weights are converted in place); the
    normalisation, the logits and the softmax stay float32, so the graph's interface is unchanged.
    """

    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self, classifier: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], *, half: bool = False
    ) -> None:
        super().__init__()
        self.compute_dtype = torch.float16 if half else torch.float32
        self.classifier = classifier.to(self.compute_dtype)
        # x/255 then (x - mean)/std, folded into one subtract and one multiply in pixel units.
        self.register_buffer("offset", torch.tensor([m * 255.0 for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([1.0 / (s * 255.0) for s in std]).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.to(torch.float32) - self.offset) * self.scale
        logits = self.classifier(x.to(self.compute_dtype)).to(torch.float32)
        return logits, torch.softmax(logits, dim=1)
