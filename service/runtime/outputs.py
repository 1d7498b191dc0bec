"""What one queued item asks of a run beyond `logits` and `probabilities`, and how a batch of
items with different asks becomes one run: the union of their outputs, one `cam_class_ids` matrix.

The graph side is models/heads.py: `features` (N, C); `cam` (N, m, h, w) and `cam_classes` (N, m)
for the classes each row of `cam_class_ids` (N, m) names, -1 meaning "the next best class".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FEATURES = "features"
CAM = "cam"
CAM_CLASSES = "cam_classes"
CAM_CLASS_IDS = "cam_class_ids"
EXTRA_OUTPUTS = (FEATURES, CAM, CAM_CLASSES)


@dataclass(frozen=True, slots=True)
class Wanted:
    """One item's extra outputs. `cam_classes`: the classes to map, in order; -1 at position j = the
    class ranked j + 1 (so (-1, -1, -1) asks for the top 3 and (281,) for class 281's map).
    Asking for `cam` implies `cam_classes`: a map is useless without the class it belongs to."""

    outputs: frozenset[str] = frozenset()
    cam_classes: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = self.outputs - set(EXTRA_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown extra outputs {sorted(unknown)}")
        if CAM in self.outputs and not self.cam_classes:
            raise ValueError("a request for cam names at least one class (or -1 for the best)")

    @property
    def any(self) -> bool:
        return bool(self.outputs)

    @classmethod
    def of(cls, outputs: Sequence[str], cam_classes: Sequence[int] = ()) -> Wanted:
        names = set(outputs)
        if CAM in names or CAM_CLASSES in names:
            names |= {CAM, CAM_CLASSES}
            cam_classes = tuple(cam_classes) or (-1,)
        return cls(frozenset(names), tuple(int(c) for c in cam_classes) if CAM in names else ())


NOTHING = Wanted()


@dataclass(frozen=True)
class RunPlan:
    """One batch's run: the extra output names (sorted) and the `cam_class_ids` feed (or None)."""

    extra: tuple[str, ...]
    cam_class_ids: np.ndarray | None

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {} if self.cam_class_ids is None else {CAM_CLASS_IDS: self.cam_class_ids}


def plan(wanted: Sequence[Wanted]) -> RunPlan:
    """The union of the items' asks: rows that want no map (or fewer) are padded with -1."""
    names = sorted(set().union(*(w.outputs for w in wanted)))
    if CAM not in names:
        return RunPlan(tuple(names), None)
    width = max(len(w.cam_classes) for w in wanted)
    ids = np.full((len(wanted), width), -1, dtype=np.int64)
    for row, w in enumerate(wanted):
        ids[row, : len(w.cam_classes)] = w.cam_classes
    return RunPlan(tuple(names), ids)


def item_rows(outputs: dict[str, np.ndarray], row: int, wanted: Wanted) -> dict[str, np.ndarray]:
    """One item's share of a batch's outputs: the base outputs, and only the extras it asked for,
    its maps cut to the classes it named."""
    rows = {key: value[row] for key, value in outputs.items() if key not in EXTRA_OUTPUTS}
    for key in wanted.outputs:
        value = outputs[key][row]
        rows[key] = value[: len(wanted.cam_classes)] if key in (CAM, CAM_CLASSES) else value
    return rows
