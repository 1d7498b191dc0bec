"""Triton's perf_analyzer beside our load generator, on one server: b0, V2 `pixels` over gRPC, one image
per request, closed loop at concurrency 1, 4 and 16 (`make bench-perf`; `make bench` runs it too).

Both clients send the same preprocessed 1080p photos as UINT8 [1, 3, 224, 224] and get the same answer
(every output, raw), so what differs is the client: perf_analyzer is C++, ours is Python (grpc.aio);
each one's own CPU is recorded (`client_cpu`, cores), and the mean batch the server ran for each (from
its statistics extension). At each concurrency the two alternate (ours first, then perf_analyzer
first, `--repeats` times), so that drift in the machine's speed touches both; the medians are kept.
Writes bench/results/perf-analyzer.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import perf_analyzer, servers
from bench.images import FULL_HD, make_jpegs
from bench.loadgen import LoadSpec, run_load
from bench.run import ensure_models
from bench.targets import V2Infer
from service._generated.inference import grpc_service_pb2 as v2_pb2
from service.model_spec import ModelSpec
from service.preprocess.images import PreprocessSpec, preprocess

log = logging.getLogger("bench.perf_compare")
ROOT = Path(__file__).resolve().parent.parent
MODEL = "b0"
CONCURRENCY = (1, 4, 16)


def pixels_request(model: str, row: np.ndarray) -> v2_pb2.ModelInferRequest:
    """What perf_analyzer sends: the pixels as raw contents, no output named (every output comes back)."""
    batch = np.ascontiguousarray(row[np.newaxis], dtype=np.uint8)
    request = v2_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request


def compare(
    repository: Path, out: Path, duration_s: float, warmup_s: float, stability: int, repeats: int
) -> dict[str, Any]:
    ensure_models(repository, [MODEL])
    spec = ModelSpec.model_validate_json((repository / MODEL / "1" / "model.json").read_bytes())
    preprocessing = PreprocessSpec.from_model_spec(spec)
    rows = [preprocess(photo, preprocessing) for photo in make_jpegs(FULL_HD, count=4)]
    work = Path(tempfile.mkdtemp(prefix="perf-compare-"))
    input_data = perf_analyzer.pixels_input_data(work / "pixels.json", rows)
    requests = [pixels_request(MODEL, row) for row in rows]
    server, grpc_port = servers.service(repository, [MODEL], {}, work / "service.log")
    address = f"127.0.0.1:{grpc_port}"
    load_before = os.getloadavg()

    def batched(measure: Callable[[int], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
        """`measure`, with the mean batch the server ran meanwhile (its statistics extension)."""

        def run(concurrency: int) -> dict[str, Any]:
            before = _counts(server.base_url)
            figures = measure(concurrency)
            after = _counts(server.base_url)
            images, batches = after[0] - before[0], after[1] - before[1]
            figures["server_mean_batch"] = round(images / batches, 2) if batches else None
            return figures

        return run

    @batched
    def ours(concurrency: int) -> dict[str, Any]:
        load = LoadSpec("closed", duration_s, warmup_s, concurrency=concurrency)
        result = asyncio.run(run_load(V2Infer(address, requests, "v2-pixels"), load, server.pid))
        return {
            "throughput": round(float(result.summary["throughput"]), 1),
            "p50_ms": _ms(result.summary["p50_ms"]),
            "p99_ms": _ms(result.summary["p99_ms"]),
            "client_cpu": round(result.cpu.client, 2),
        }

    @batched
    def theirs(concurrency: int) -> dict[str, Any]:
        cpu_before, started = _children_cpu_s(), time.monotonic()
        run = perf_analyzer.run(
            MODEL, address, "grpc", (concurrency,), work, input_data=input_data,
            measurement_ms=int(duration_s * 1000), stability_percentage=stability, max_trials=15,
        )  # fmt: skip
        (row,) = run.rows
        return {
            "throughput": round(row.throughput, 1),
            "p50_ms": round(row.p50_us / 1000, 2),
            "p99_ms": round(row.p99_us / 1000, 2),
            # perf_analyzer's own CPU over its whole run (stabilising windows included), in cores
            "client_cpu": round((_children_cpu_s() - cpu_before) / (time.monotonic() - started), 2),
            "server_queue_ms": _ms(row.server_queue_us and row.server_queue_us / 1000),
            "server_compute_infer_ms": _ms(
                row.server_compute_infer_us and row.server_compute_infer_us / 1000
            ),
        }

    results: list[dict[str, Any]] = []
    with server:
        for concurrency in CONCURRENCY:
            loadgen: list[dict[str, Any]] = []
            perf: list[dict[str, Any]] = []
            for repeat in range(repeats):  # alternate which client goes first
                order = (ours, theirs) if repeat % 2 == 0 else (theirs, ours)
                for client in order:
                    (loadgen if client is ours else perf).append(client(concurrency))
            entry = {
                "concurrency": concurrency,
                "loadgen": _median(loadgen),
                "perf_analyzer": _median(perf),
                "runs": {"loadgen": loadgen, "perf_analyzer": perf},
            }
            entry["throughput_ratio"] = round(
                entry["perf_analyzer"]["throughput"] / max(entry["loadgen"]["throughput"], 1e-9), 3
            )
            results.append(entry)
            log.info(
                "c=%-3d loadgen %s perf_analyzer %s", concurrency, entry["loadgen"], entry["perf_analyzer"]
            )
    document = {
        "model": MODEL,
        "input": "V2 pixels over gRPC, one 1080p photo preprocessed to [1, 3, 224, 224] per request",
        "duration_s": duration_s,
        "repeats": repeats,
        "perf_analyzer_stability_percentage": stability,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf-analyzer.json").write_text(json.dumps(document, indent=1) + "\n")
    return document


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (None where a run had none)."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if run[key] is not None]
        merged[key] = round(statistics.median(values), 2) if values else None
    return merged


def _counts(base_url: str) -> tuple[int, int]:
    """(images run, batches run) of the model so far."""
    (row,) = httpx.get(f"{base_url}/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"]
    return int(row["inference_count"]), int(row["execution_count"])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def table(document: dict[str, Any]) -> str:
    lines = [
        "| concurrency | ours img/s | ours p50 / p99 ms | ours mean batch | perf_analyzer img/s "
        "| perf_analyzer p50 / p99 ms | perf_analyzer mean batch | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        ours, perf = row["loadgen"], row["perf_analyzer"]
        lines.append(
            f"| {row['concurrency']} | {ours['throughput']} | {ours['p50_ms']} / {ours['p99_ms']} | "
            f"{ours['server_mean_batch']} | {perf['throughput']} | {perf['p50_ms']} / {perf['p99_ms']} | "
            f"{perf['server_mean_batch']} | {row['throughput_ratio']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured window per level and client")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per client and level (medians kept)")
    parser.add_argument(
        "--stability",
        type=int,
        default=25,
        help="perf_analyzer's --stability-percentage: three windows within this much count as stable",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    document = compare(
        args.repository.resolve(), args.out, args.duration_s, args.warmup_s, args.stability, args.repeats
    )
    print(table(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
