"""Triton's statistics extension, counted: per model, what its requests, queue, preprocessing, runs
and cache lookups took. `Metrics` (metrics.py) feeds it from the same calls that observe the Prometheus
histograms, so one observation is both a histogram sample and a count here; service/api/v2/stats.py
answers it in Triton's shape.

Granularity, as in Triton where it can be: `success` and `fail` count requests admitted to the model;
`queue`, `compute_input` (decoding and resizing an image; a `pixels` row takes none), `compute_infer`
(the run of the batch the image was in) and `compute_output` (handing the batch's rows to their
callers) count images; `cache_hit`/`cache_miss` count response cache lookups per image. `batch_stats`
count executed batches per size. Every call comes from the event loop's thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """How many times something happened and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelCounts:
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch; 0: never
    inference_count: int = 0  # images run
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    INFERENCE_FIELDS = (
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
        "cache_miss",
    )  # fmt: skip


class Statistics:
    """The counts of every model seen, by model name (the label of the Prometheus series)."""

    def __init__(self) -> None:
        self._models: dict[str, ModelCounts] = {}

    def of(self, model: str) -> ModelCounts:
        """The counts of `model` (zero for a model that has done nothing yet)."""
        counts = self._models.get(model)
        if counts is None:
            counts = self._models[model] = ModelCounts()
        return counts

    def batch(self, model: str, size: int, prepare_s: float, inference_s: float, output_s: float) -> None:
        counts = self.of(model)
        counts.last_inference_ms = int(time.time() * 1000)
        counts.inference_count += size
        counts.execution_count += 1
        # Every image in a batch waited for the whole run and the whole scatter (Triton's rule). The
        # compute counts must stay equal (perf_analyzer refuses them otherwise): compute_input counts
        # the batch's images here, its time comes from `preprocessed`, where it is measured.
        counts.compute_input.count += size
        counts.compute_infer.add(inference_s * size, size)
        counts.compute_output.add(output_s * size, size)
        per_size = counts.batches.get(size)
        if per_size is None:
            per_size = counts.batches[size] = BatchDurations()
        per_size.compute_input.add(prepare_s)
        per_size.compute_infer.add(inference_s)
        per_size.compute_output.add(output_s)

    def queued(self, model: str, seconds: float) -> None:
        self.of(model).queue.add(seconds)

    def preprocessed(self, model: str, seconds: float) -> None:
        """One image decoded and resized (before its batch, or in its batch's thread)."""
        self.of(model).compute_input.add(seconds, count=0)

    def request(self, model: str, succeeded: bool, seconds: float) -> None:
        counts = self.of(model)
        (counts.success if succeeded else counts.fail).add(seconds)

    def cache(self, model: str, hits: int, misses: int, seconds: float) -> None:
        """`seconds`: the lookup of all `hits + misses` images, shared out evenly among them."""
        total = hits + misses
        if not total:
            return
        counts = self.of(model)
        counts.cache_hit.add(seconds * hits / total, hits)
        counts.cache_miss.add(seconds * misses / total, misses)
