"""check.py's runtime_options phase on the CPU provider: each variant in its own process, recorded as it
ends; a variant that fails, or that no longer fits the time left, is recorded and the others are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.gpu import runtime_options as phase


def test_variants_are_measured_each_in_its_own_process_until_time_runs_out(
    tiny_check_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        phase,
        "VARIANTS",
        {
            "bucket_sessions": {},
            "broken": {"cuda_intra_op_threads": -1},
            "cuda_graphs": {"cuda_graphs": True},
        },
    )
    left = iter([60.0, 60.0, 60.0, 60.0, 1.0, 1.0, 1.0])  # the third variant finds 1 s left
    results: dict[str, Any] = {}
    saves: list[dict[str, Any]] = []
    phase.runtime_options(
        tiny_check_repository / "b0" / "1" / "model.onnx", 16, 0.001, "cpu", 6,
        lambda: next(left), 4.0, results, lambda: saves.append(dict(results)),
    )  # fmt: skip
    measured = results["bucket_sessions"]
    assert measured["provider"] == "CPUExecutionProvider" and measured["gpu_mib"] is None  # no nvidia-smi
    assert measured["intra_op_threads"] >= 1 and measured["random_sizes_mean_ms"] > 0
    assert measured["batch_1_ms"] > 0 and measured["rss_mib"] > 0 and measured["max_batch"] == 4
    assert results["broken"].startswith("failed: ValidationError")
    assert results["cuda_graphs"].startswith("skipped: time (1 s left")
    assert saves[0] == {"bucket_sessions": "running"}  # a cut-off run shows which variant it was in
    assert saves[1]["bucket_sessions"] == measured
