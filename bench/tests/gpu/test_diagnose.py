"""The diagnosis's reading of the server's stage histograms (bench/gpu/diagnose.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.gpu.diagnose import _stage_means, main, service_is_slow


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


@pytest.mark.parametrize(
    ("document", "slow"),
    [
        ({"figures": {"b0: service V2 pixels 16 per request / bare ORT best": 0.012}}, True),
        ({"figures": {"b0: service V2 pixels 16 per request / bare ORT best": 0.83}}, False),
        # One image per request is capped by the front process, not the runtime: it triggers nothing.
        ({"figures": {"b0: service V2 pixels / bare ORT best": 0.2}}, True),  # no 16-image figure
        (
            {
                "figures": {
                    "b0: service V2 pixels / bare ORT best": 0.2,
                    "b0: service V2 pixels 16 per request / bare ORT best": 0.93,
                }
            },
            False,
        ),
        ({"figures": {"b0: memory growth after warm-up (MiB)": 0.0}}, True),  # the service never ran
        ({"stopped": {"phase": "preflight"}}, True),
    ],
)
def test_the_diagnosis_follows_the_check_when_the_service_is_slow_or_unmeasured(
    tmp_path: Path, document: dict[str, object], slow: bool
) -> None:
    gpu_json = tmp_path / "gpu.json"
    gpu_json.write_text(json.dumps(document))
    assert service_is_slow(gpu_json) is slow
    code = main(["--repository", str(tmp_path), "--out", str(tmp_path), "--if-slow", str(gpu_json)])
    assert code == (0 if slow else 1)


def test_a_missing_or_broken_check_counts_as_slow(tmp_path: Path) -> None:
    assert service_is_slow(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    assert service_is_slow(tmp_path / "broken.json")
