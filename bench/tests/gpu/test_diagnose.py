"""The diagnosis's reading of the server's stage histograms (bench/gpu/diagnose.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.gpu.diagnose import _stage_means


def test_stage_means_are_per_model_means_in_milliseconds() -> None:
    registry = CollectorRegistry()
    inference = Histogram("effnet_inference_duration_seconds", "x", ["model"], registry=registry)
    batch = Histogram("effnet_batch_size", "x", ["model"], buckets=(1, 8, 64, 256), registry=registry)
    for seconds in (0.010, 0.030):
        inference.labels(model="b0").observe(seconds)
    inference.labels(model="b3").observe(5.0)  # another model's batches stay out
    for size in (32, 96):
        batch.labels(model="b0").observe(size)
    means = _stage_means(generate_latest(registry).decode())
    assert means["effnet_inference_duration_seconds"] == pytest.approx(20.0)
    assert means["effnet_batch_size"] == 64.0
