"""The exportable variants and their static facts (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["torchvision", "lite"]

# EfficientNet-Lite was trained on (x - 127) / 128 in pixel units; expressed here in [0, 1] units.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# The reference evaluation crops the centre crop / (crop + 32) of the shorter side and resizes it to
# crop: the same as resizing the shorter side to crop + 32 and centre-cropping crop.
LITE_CROP_PADDING = 32


@dataclass(frozen=True)
class Variant:
    key: str
    family: Family
    builder: str  # torchvision.models function name, or the efficientnet_lite_pytorch model name
    paper_params_m: float  # EfficientNet paper, Table 2 (lite: the Lite release notes; V2: V2 paper Table 7)
    lite_crop: int | None = None  # Lite only: the input size its weights were trained and evaluated at


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("b0", "torchvision", "efficientnet_b0", 5.3),
        Variant("b1", "torchvision", "efficientnet_b1", 7.8),
        Variant("b2", "torchvision", "efficientnet_b2", 9.2),
        Variant("b3", "torchvision", "efficientnet_b3", 12.0),
        Variant("b4", "torchvision", "efficientnet_b4", 19.0),
        Variant("b5", "torchvision", "efficientnet_b5", 30.0),
        Variant("b6", "torchvision", "efficientnet_b6", 43.0),
        Variant("b7", "torchvision", "efficientnet_b7", 66.0),
        Variant("lite0", "lite", "efficientnet-lite0", 4.7, lite_crop=224),
        Variant("lite1", "lite", "efficientnet-lite1", 5.4, lite_crop=240),
        Variant("lite2", "lite", "efficientnet-lite2", 6.1, lite_crop=260),
        # EfficientNetV2 (torchvision; paper Table 7). Exported on request only: `all` leaves them out
        # (v2-l alone is 118 M parameters and 56 GFLOPs at 480 px, too heavy for a default repository).
        Variant("v2-s", "torchvision", "efficientnet_v2_s", 22.0),
        Variant("v2-m", "torchvision", "efficientnet_v2_m", 54.0),
        Variant("v2-l", "torchvision", "efficientnet_v2_l", 120.0),
    )
}
V2 = ("v2-s", "v2-m", "v2-l")
# What `all` means: B0-B7 and Lite0-2.
ALL = tuple(key for key in VARIANTS if key not in V2)
KNOWN = tuple(VARIANTS)


class UnknownVariant(ValueError):
    pass


def get_variant(key: str) -> Variant:
    try:
        return VARIANTS[key]
    except KeyError:
        raise UnknownVariant(f"unknown variant {key!r}; choose from {', '.join(KNOWN)} or 'all'") from None


def expand(keys: list[str] | tuple[str, ...]) -> list[Variant]:
    """Resolve CLI variant keys ('all' included) into variants, in table order, without duplicates."""
    wanted: set[str] = set()
    for key in keys:
        wanted.update(ALL if key == "all" else (get_variant(key).key,))
    return [v for k, v in VARIANTS.items() if k in wanted]
