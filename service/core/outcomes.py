"""What running a request produces: raw outputs per image (`InferOutcome`), or top-k predictions
(`ClassifyOutcome`), each with the version that ran it, where the time went, and the route taken."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.lifecycle.records import ModelEntry
from service.runtime.batcher import ItemResult
from service.schemas import Prediction, Route, Timings


@dataclass
class InferOutcome:
    """Raw outputs, one row per image, plus where the time went."""

    model: ModelEntry
    outputs: dict[str, np.ndarray]
    timings: Timings
    route: Route | None = None  # set by `auto` and cascades
    cached: tuple[bool, ...] = ()  # per image: answered from the response cache (empty: none were)

    @property
    def all_cached(self) -> bool:
        return bool(self.cached) and all(self.cached)


@dataclass
class ClassifyOutcome:
    model: ModelEntry
    predictions: list[list[Prediction]]
    timings: Timings
    route: Route | None = None
    cached: tuple[bool, ...] = ()

    @property
    def all_cached(self) -> bool:
        return bool(self.cached) and all(self.cached)


def classified(outcome: InferOutcome, top_k: int) -> ClassifyOutcome:
    probabilities = outcome.outputs["probabilities"]
    predictions = [top_k_predictions(row, outcome.model.labels, top_k) for row in probabilities]
    return ClassifyOutcome(outcome.model, predictions, outcome.timings, outcome.route, outcome.cached)


def top_k_predictions(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The k most probable classes, highest first (ties: lower class id first)."""
    k = min(k, probabilities.shape[0])
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    order = sorted(candidates.tolist(), key=lambda i: (-float(probabilities[i]), i))
    return [Prediction(class_id=i, label=labels[i], score=float(probabilities[i])) for i in order]


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image output rows -> one array per output, one row per image."""
    names = rows[0].keys()
    return {name: np.stack([row[name] for row in rows]) for name in names}


def batch_timings(results: list[ItemResult], preprocess_s: float, start: float) -> Timings:
    """Where the time went; queue and inference are 0 when every image came from the cache."""
    return Timings(
        preprocess_ms=round(preprocess_s * 1000, 3),
        queue_ms=round(max((r.queue_s for r in results), default=0.0) * 1000, 3),
        inference_ms=round(max((r.inference_s for r in results), default=0.0) * 1000, 3),
        total_ms=round((time.monotonic() - start) * 1000, 3),
    )
