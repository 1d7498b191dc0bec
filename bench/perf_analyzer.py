"""Triton's perf_analyzer, run against our server: where it is, how to run it, and its CSV read back.

perf_analyzer ships in the `tritonclient` 2.41.0 wheel (`bin/perf_analyzer`) that `make perf-analyzer`
installs into a venv of its own (`.venv-perf`, beside the main venv's newer tritonclient). It needs
Debian's libb64-0d and, even without a GPU, `libcudart.so.12` (PyPI `nvidia-cuda-runtime-cu12`, in that
venv) on the loader path: `command()` sets it. The end-to-end tests (tests/e2e/test_perf_analyzer.py)
and the benchmark (bench/perf_compare.py) both run it through `run()`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PERF_VENV = ROOT / ".venv-perf"
MISSING = "perf_analyzer is not installed: run `make perf-analyzer` (it makes .venv-perf)"


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of perf_analyzer's CSV (latencies in microseconds)."""

    concurrency: int
    throughput: float  # inferences per second
    p50_us: float
    p90_us: float
    p99_us: float
    server_queue_us: float | None  # from the server's statistics; None when it gave none
    server_compute_infer_us: float | None


@dataclass(frozen=True)
class PerfRun:
    rows: list[PerfRow]
    stdout: str


def command() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in. Raises FileNotFoundError (MISSING)."""
    binary = PERF_VENV / "bin" / "perf_analyzer"
    runtimes = sorted(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not binary.exists() or not runtimes:
        raise FileNotFoundError(MISSING)
    paths = [str(runtimes[-1]), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    return binary, {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}


def pixels_input_data(path: Path, pixels: list[np.ndarray]) -> Path:
    """A perf_analyzer `--input-data` file that sends `pixels` (one uint8 (3, S, S) row per request, in
    turn) and leaves the optional `image` input out."""
    document = {
        "data": [{"pixels": {"content": row.ravel().tolist(), "shape": list(row.shape)}} for row in pixels]
    }
    path.write_text(json.dumps(document))
    return path


def run(
    model: str,
    url: str,
    protocol: str,
    concurrencies: tuple[int, ...],
    out_dir: Path,
    *,
    shared_memory: bool = False,
    input_data: Path | None = None,
    measurement_ms: int = 500,
    stability_percentage: int = 10,
    max_trials: int = 10,
    timeout_s: float = 300.0,
) -> PerfRun:
    """A concurrency sweep over `concurrencies` (one perf_analyzer run when they are evenly spaced, else
    one per level); raises RuntimeError with its output when perf_analyzer fails."""
    binary, env = command()
    rows: list[PerfRow] = []
    outputs: list[str] = []
    for sweep in _sweeps(concurrencies):
        tag = "-".join(str(c) for c in sweep)
        csv_path = out_dir / f"perf-{model}-{protocol}{'-shm' if shared_memory else ''}-{tag}.csv"
        args = [
            str(binary), "-m", model, "-u", url, "-i", protocol,
            "--concurrency-range", _range(sweep),
            "--measurement-interval", str(measurement_ms),
            "--stability-percentage", str(stability_percentage),
            "--max-trials", str(max_trials),
            "-f", str(csv_path),
        ]  # fmt: skip
        if shared_memory:
            args += ["--shared-memory", "system"]
        if input_data is not None:
            args += ["--input-data", str(input_data)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0 or not csv_path.exists():
            raise RuntimeError(f"perf_analyzer exited with {done.returncode}:\n{output[-4000:]}")
        rows += parse_csv(csv_path)
        outputs.append(output)
    return PerfRun(sorted(rows, key=lambda row: row.concurrency), "\n".join(outputs))


def _sweeps(concurrencies: tuple[int, ...]) -> list[tuple[int, ...]]:
    steps = {b - a for a, b in zip(concurrencies, concurrencies[1:], strict=False)}
    if len(steps) <= 1 and all(step > 0 for step in steps):
        return [concurrencies]
    return [(c,) for c in concurrencies]


def _range(sweep: tuple[int, ...]) -> str:
    """perf_analyzer's start:end:step."""
    if len(sweep) == 1:
        return f"{sweep[0]}:{sweep[0]}"
    return f"{sweep[0]}:{sweep[-1]}:{sweep[1] - sweep[0]}"


def parse_csv(path: Path) -> list[PerfRow]:
    """perf_analyzer's `-f` CSV, one row per concurrency, sorted by concurrency."""
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    rows = [
        PerfRow(
            concurrency=int(record["Concurrency"]),
            throughput=float(record["Inferences/Second"]),
            p50_us=float(record["p50 latency"]),
            p90_us=float(record["p90 latency"]),
            p99_us=float(record["p99 latency"]),
            server_queue_us=_optional(record.get("Server Queue")),
            server_compute_infer_us=_optional(record.get("Server Compute Infer")),
        )
        for record in records
    ]
    return sorted(rows, key=lambda row: row.concurrency)


def _optional(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)
