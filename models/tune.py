"""Choose a cascade's exit confidence from your own labelled photos (`python -m models.cascade --tune`).

Every stage runs once on every photo (ONNX Runtime, each model's own preprocessing from model.json), so
the cascade can be replayed offline at any threshold: an image leaves at the first stage whose top
probability reaches the threshold (one threshold for all early stages), otherwise the last stage
answers. For each threshold on a 0.01 grid this gives the cascade's top-1 on the photos and its mean
cost per image (each stage's measured ms per image, batch 1, one thread, times the share of images
that reach it; and the same in GMACs, which does not depend on the machine's load). The chosen
threshold is the cheapest one whose top-1 is within `max_drop` percentage points of the last stage's
own top-1 (at equal cost, the highest such threshold: the same answers here, more caution elsewhere),
in the style of the curve bench/family.py draws on the scikit-image photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ExportError
from models.labelled import find_model, hits, ms_per_image, pixels, probabilities, read_labelled, targets
from service.preprocess.images import PreprocessSpec

GRID = tuple(round(0.01 * i, 2) for i in range(1, 101))  # 0.01 .. 1.00


def replay(probs: list[np.ndarray], threshold: float) -> tuple[np.ndarray, list[float]]:
    """(the cascade's answer per image, the share of images that reach each stage)."""
    count = len(probs[0])
    answer = np.full(count, -1, dtype=np.int64)
    pending = np.ones(count, dtype=bool)
    reached = []
    for index, stage in enumerate(probs):
        reached.append(float(pending.mean()))
        leaves = pending if index == len(probs) - 1 else pending & (stage.max(axis=1) >= threshold)
        answer[leaves] = stage[leaves].argmax(axis=1)
        pending &= ~leaves
    return answer, reached


def tune(repository: Path, stages: list[str], source: Path, max_drop: float) -> dict[str, Any]:
    if len(stages) < 2:
        raise ExportError("a cascade needs at least two stages")
    if max_drop < 0:
        raise ExportError(f"--max-drop is in percentage points and must be >= 0, got {max_drop}")
    models = [find_model(repository, name) for name in stages]
    last = models[-1]
    for model in models[:-1]:
        if model.labels != last.labels:
            raise ExportError(
                f"{model.name} and {last.name} have different labels: a cascade needs one label set"
            )
    samples = read_labelled(source)
    truth = targets(samples, last.labels)
    cache: dict[PreprocessSpec, np.ndarray] = {}
    probs, ms, gmacs = [], [], []
    for model in models:
        spec = PreprocessSpec.from_model_spec(model.spec)
        if spec not in cache:
            cache[spec] = pixels(samples, spec)
        probs.append(probabilities(model, cache[spec]))
        ms.append(ms_per_image(model, cache[spec]))
        gmacs.append(model.spec.gmacs)
    singles = {
        model.name: {
            "top1": _percent(hits(p.argmax(axis=1), truth)),
            "ms_per_image": round(cost, 3),
            "gmacs": g,
        }
        for model, p, cost, g in zip(models, probs, ms, gmacs, strict=True)
    }
    reference = singles[last.name]["top1"]
    points, exact_ms = [], []
    for threshold in GRID:
        answer, reached = replay(probs, threshold)
        cost = sum(r * c for r, c in zip(reached, ms, strict=True))
        exact_ms.append(cost)
        points.append(
            {
                "threshold": threshold,
                "top1": _percent(hits(answer, truth)),
                "reached": [round(r, 4) for r in reached],
                "ms_per_image": round(cost, 3),
                "gmacs_per_image": round(sum(r * g for r, g in zip(reached, gmacs, strict=True)), 4),
            }
        )
    floor = reference - max_drop
    good = [i for i, p in enumerate(points) if p["top1"] >= floor - 1e-9]
    # Chosen on the unrounded cost: a stage that costs under the rounding step must not tie with
    # skipping it (the tie would then go to the higher threshold, sending images on for nothing).
    best = min(good, key=lambda i: (exact_ms[i], -points[i]["threshold"])) if good else None
    chosen = points[best] if best is not None else None
    return {
        "stages": stages,
        "dataset": str(source),
        "images": len(samples),
        "max_drop": max_drop,
        "last_stage_top1": reference,
        "top1_floor": round(floor, 4),
        "cost_note": "ms: each stage's median ms per image at batch 1 on one ORT thread on this machine, "
        "times the share of images reaching it; gmacs: the same from model.json",
        "chosen": chosen,
        "singles": singles,
        "points": points,
    }


def _percent(hits: np.ndarray) -> float:
    return round(float(100.0 * hits.mean()), 4)
