"""Triton's perf_analyzer (the tritonclient 2.41.0 wheel's, `make perf-analyzer`) against a real server on
a tiny real model: a short concurrency sweep over HTTP and gRPC, with and without system shared memory,
completes, and its CSV reads back with the server-side figures the statistics extension gives."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench import perf_analyzer
from tests.e2e.conftest import LiveServer, ServerFactory
from tests.tiny_model import SIZE, write_model

pytestmark = pytest.mark.slow

SWEEP = (1, 2)
# A functional test on a shared, busy machine: any three windows count as stable (a benchmark would not).
STABILITY = 1000


@pytest.fixture(scope="module")
def perf_server(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """`tiny` (takes `pixels` or `image`) and `pix` (config.json: `pixels` only, so that perf_analyzer's
    shared memory mode, which sends every input, can run it)."""
    try:
        perf_analyzer.command()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    repository = tmp_path_factory.mktemp("perf")
    write_model(repository, "tiny")
    write_model(repository, "pix")
    (repository / "pix" / "config.json").write_text(json.dumps({"v2_inputs": ["pixels"]}))
    return server_factory(repository)


def _url(server: LiveServer, protocol: str) -> str:
    return f"127.0.0.1:{server.http_port if protocol == 'http' else server.grpc_port}"


def _inference_count(server: LiveServer, model: str) -> int:
    stats = httpx.get(f"{server.http_url}/v2/models/{model}/stats").json()
    return int(stats["model_stats"][0]["inference_count"])


def _check(run: perf_analyzer.PerfRun) -> None:
    assert [row.concurrency for row in run.rows] == list(SWEEP)
    for row in run.rows:
        assert row.throughput > 0 and 0 < row.p50_us <= row.p99_us
        # Server-side figures come from our statistics extension.
        assert row.server_compute_infer_us is not None and row.server_queue_us is not None
    lowered = run.stdout.lower()
    assert "error" not in lowered and "failed" not in lowered, run.stdout[-2000:]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_concurrency_sweep_with_the_optional_input_left_out(
    perf_server: LiveServer, protocol: str, tmp_path: Path
) -> None:
    rows = [np.full((3, SIZE, SIZE), value, dtype=np.uint8) for value in (10, 120, 240)]
    data = perf_analyzer.pixels_input_data(tmp_path / "pixels.json", rows)
    before = _inference_count(perf_server, "tiny")
    run = perf_analyzer.run(
        "tiny", _url(perf_server, protocol), protocol, SWEEP, tmp_path,
        input_data=data, measurement_ms=300, stability_percentage=STABILITY, max_trials=10, timeout_s=120,
    )  # fmt: skip
    _check(run)
    assert _inference_count(perf_server, "tiny") > before


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_concurrency_sweep_through_system_shared_memory(
    perf_server: LiveServer, protocol: str, tmp_path: Path
) -> None:
    before = _inference_count(perf_server, "pix")
    run = perf_analyzer.run(
        "pix", _url(perf_server, protocol), protocol, SWEEP, tmp_path,
        shared_memory=True, measurement_ms=300, stability_percentage=STABILITY, max_trials=10, timeout_s=120,
    )  # fmt: skip
    _check(run)
    assert _inference_count(perf_server, "pix") > before
    # perf_analyzer unregistered its regions on the way out: the server holds none.
    assert httpx.get(f"{perf_server.http_url}/v2/systemsharedmemory/status").json() == []


def test_the_csv_reader_on_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "sweep.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency,p90 latency,p95 latency,p99 latency\n"
        "4,900.5,4,1644,96,0,136,9,1,1790,2328,2517,3708\n"
        "1,670.9,4,1365,34,0,72,9,1,1049,2108,4412,8950\n"
    )
    rows = perf_analyzer.parse_csv(path)
    assert [(r.concurrency, r.throughput, r.p50_us, r.server_compute_infer_us) for r in rows] == [
        (1, 670.9, 1049.0, 72.0),
        (4, 900.5, 1790.0, 136.0),
    ]
