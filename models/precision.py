"""Precisions the exporter writes, how they are named, and how `--precision` is parsed."""

from __future__ import annotations

from typing import Final, get_args

from models.errors import ExportError
from service.model_spec import Precision

PRECISIONS: Final[tuple[Precision, ...]] = get_args(Precision)


def parse_precisions(values: list[str] | tuple[str, ...]) -> tuple[Precision, ...]:
    """`--precision` values (repeated or comma-separated) -> precisions in canonical order, no duplicates.

    fp32 always comes first: it is the reference the others are checked against.
    """
    wanted: set[str] = set()
    for value in values:
        for item in value.split(","):
            key = item.strip().lower()
            if not key:
                continue
            if key not in PRECISIONS:
                raise ExportError(f"unknown precision {item.strip()!r}; choose from {', '.join(PRECISIONS)}")
            wanted.add(key)
    if not wanted:
        raise ExportError(f"--precision needs at least one of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in wanted)


def model_name(base: str, precision: Precision) -> str:
    """`b0` (fp32), `b0-fp16`, `b0-int8`: the fp32 model keeps the plain name."""
    return base if precision == "fp32" else f"{base}-{precision}"
