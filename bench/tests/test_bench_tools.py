"""Fast checks of the benchmark tools' arithmetic and bookkeeping (no servers, no models)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from bench.figures import figures
from bench.images import make_jpegs
from bench.loadgen import LoadSpec, run_load
from bench.references import pipeline_limit
from bench.servers import histogram_delta
from bench.stats import Sample, summarize


def test_summarize_counts_only_requests_due_in_the_window() -> None:
    samples = [
        Sample(0.5, 0.010, "ok"),  # warm-up: ignored
        Sample(1.0, 0.020, "ok"),
        Sample(1.5, 0.040, "ok"),
        Sample(1.9, 0.001, "503"),
        Sample(3.0, 0.010, "ok"),  # after the window
    ]
    s = summarize(samples, (1.0, 3.0))
    assert s["requests"] == 3
    assert s["ok"] == 2
    assert s["throughput"] == pytest.approx(1.0)
    assert s["statuses"] == {"ok": 2, "503": 1}
    assert s["p50_ms"] == pytest.approx(30.0)


def test_pipeline_limit_matches_the_environment_note() -> None:
    # 2 cores / (4.2 ms preprocessing + 6.6 ms inference core time) ~ 185 images/s
    assert pipeline_limit(2, 4.2, 6.6) == pytest.approx(185.2, abs=0.1)


def test_histogram_delta_turns_cumulative_buckets_into_counts() -> None:
    before = {"1.0": 5.0, "2.0": 5.0, "4.0": 6.0, "+Inf": 6.0}
    after = {"1.0": 7.0, "2.0": 10.0, "4.0": 20.0, "+Inf": 20.0}
    assert histogram_delta(before, after) == {"1.0": 2, "2.0": 3, "4.0": 9}


def test_jpegs_have_the_requested_size_and_differ() -> None:
    bodies = make_jpegs((320, 180), count=3)
    assert len(set(bodies)) == 3
    assert all(Image.open(io.BytesIO(b)).size == (320, 180) for b in bodies)


class _FakeTarget:
    name = "fake"

    def __init__(self, service_s: float, fail_every: int = 0) -> None:
        self.service_s, self.fail_every, self.sent = service_s, fail_every, 0

    async def open(self, concurrency: int) -> None:
        pass

    async def send(self, index: int) -> str:
        self.sent += 1
        await asyncio.sleep(self.service_s)
        return "503" if self.fail_every and self.sent % self.fail_every == 0 else "ok"

    async def close(self) -> None:
        pass


async def test_closed_loop_throughput_follows_concurrency_over_service_time() -> None:
    result = await run_load(
        _FakeTarget(0.01), LoadSpec("closed", duration_s=0.5, warmup_s=0.1, concurrency=4)
    )
    # 4 clients / 10 ms = 400/s at most; the event loop's overhead only lowers it
    assert 200 < result.summary["throughput"] <= 420
    assert result.cpu.client >= 0


async def test_open_loop_sends_at_the_offered_rate_and_records_failures() -> None:
    target = _FakeTarget(0.005, fail_every=5)
    result = await run_load(target, LoadSpec("open", duration_s=0.5, warmup_s=0.1, rate=100))
    assert target.sent == 60
    statuses = result.summary["statuses"]
    assert statuses.get("ok", 0) + statuses.get("503", 0) == 50
    assert statuses.get("503", 0) >= 8


def test_figures_compute_efficiency_and_speedup() -> None:
    cpu = {"client": 0.2, "server": 1.7, "machine": 2.0, "other": 0.1, "cores": 2}

    def run(server: str, c: int, throughput: float) -> dict[str, object]:
        return {"server": server, "settings": {}, "input": "1080p", "model": "b0", "protocol": "http",
                "mode": "closed", "concurrency": c, "throughput": throughput, "p50_ms": 20.0, "p99_ms": 25.0,
                "cpu": cpu, "client_bound": False}  # fmt: skip

    result = {
        "references": {
            "b0": {
                "pipeline_limit_1080p": 200.0,
                "preprocess_1080p": {"ms": 5.0},
                "bare_ort": {"best_images_per_s": 300.0, "batches": {"1": {"ms_per_batch": 4.0}}},
            }
        },
        "runs": [
            run("service", 1, 50.0),
            run("service", 16, 170.0),
            run("naive", 16, 68.0),
            run("floor", 16, 180.0),
        ],
    }
    f = figures(result)
    assert f["efficiency"]["b0"]["efficiency"] == pytest.approx(0.85)
    assert f["efficiency"]["b0"]["efficiency_excluding_client_cpu"] == pytest.approx(170 / 180, abs=1e-3)
    assert f["speedup_vs_naive"]["b0"]["16"] == pytest.approx(2.5)
    assert f["latency_c1_b0"]["added_ms"] == pytest.approx(11.0)
    assert f["goals_b0"]["floor_efficiency_16"] == pytest.approx(0.9)
    assert f["goals_b0"]["service_over_floor_16"] == pytest.approx(170 / 180, abs=1e-3)
    assert f["goals_b0"]["bare_bs1_same_threads_ms"] == 4.0 and not f["goals_b0"]["bare_bs1_spins"]
    # A service that spins is held to the bare run that spins.
    b0 = result["references"]["b0"]
    b0["bare_ort_spinning"] = {"batches": {"1": {"ms_per_batch": 3.0}}}
    b0["service_spinning"] = True
    assert figures(result)["goals_b0"]["bare_bs1_same_threads_ms"] == 3.0
