"""The `--from timm` flags of `python -m models.export` and what they override in timm's eval config."""

from __future__ import annotations

import argparse

from models.errors import ExportError
from models.timm_export import INTERPOLATIONS, Overrides


def triple(text: str) -> tuple[float, float, float]:
    """'0.485,0.456,0.406' (or one number for all three channels) -> a per-channel RGB triple."""
    try:
        values = [float(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated numbers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three numbers (R,G,B) or one for all three")
    return values[0], values[1], values[2]


def add_timm_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--arch", default=None, help="timm architecture, e.g. tf_efficientnet_b3 or efficientnet_b0"
    )
    group.add_argument(
        "--ema", action="store_true", help="export the checkpoint's state_dict_ema (timm's model EMA) weights"
    )
    group.add_argument(
        "--label-order",
        choices=("sorted", "natural"),
        default="natural",
        help="order of a --labels folder's class folders: natural (timm's reader, the default) or sorted "
        "(torchvision's ImageFolder)",
    )
    group.add_argument("--input-size", type=int, default=None, help="crop size (default: timm's config)")
    group.add_argument("--crop-pct", type=float, default=None, help="crop / resize (default: timm's config)")
    group.add_argument(
        "--resize", type=int, default=None, help="shorter-side resize (default: crop / crop_pct)"
    )
    group.add_argument("--interpolation", choices=INTERPOLATIONS, default=None, help="default: timm's config")
    group.add_argument(
        "--mean", type=triple, default=None, help="R,G,B in [0, 1] units (default: timm's config)"
    )
    group.add_argument(
        "--std", type=triple, default=None, help="R,G,B in [0, 1] units (default: timm's config)"
    )


def timm_overrides(args: argparse.Namespace) -> Overrides:
    if args.crop_pct is not None and not 0.0 < args.crop_pct <= 1.0:
        raise ExportError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.input_size is not None and args.input_size <= 0:
        raise ExportError(f"--input-size must be positive, got {args.input_size}")
    if args.std is not None and min(args.std) <= 0:
        raise ExportError("--std values must be positive")
    return Overrides(
        input_size=args.input_size,
        crop_pct=args.crop_pct,
        resize=args.resize,
        interpolation=args.interpolation,
        mean=args.mean,
        std=args.std,
    )


def timm_only_flags(args: argparse.Namespace) -> list[str]:
    """The timm flags given on the command line (they mean nothing for --from torchvision)."""
    given = {
        "--arch": args.arch,
        "--ema": args.ema or None,
        "--input-size": args.input_size,
        "--crop-pct": args.crop_pct,
        "--resize": args.resize,
        "--interpolation": args.interpolation,
        "--mean": args.mean,
        "--std": args.std,
    }
    return [flag for flag, value in given.items() if value is not None]
