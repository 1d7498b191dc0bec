"""Bare ONNX Runtime CPU latency of exported models, measured side by side in one run.

`python -m models.speed --repository DIR --models lite0,lite0-int8 [--threads 1] [--batches 1,4]`
prints the median ms per image for each model and batch size. Runs are interleaved (model A, model B,
A, B, ...) so that the load other processes put on the machine falls on every model alike; compare
only figures from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec


def measure(
    folders: dict[str, Path], threads: int, batches: Sequence[int], rounds: int, warmup: int = 3
) -> dict[str, dict[int, float]]:
    """Median milliseconds per image, {model: {batch: ms}}."""
    import onnxruntime as ort

    from service.runtime.int8_kernels import faithful_int8

    sessions = {}
    specs = {}
    for name, folder in folders.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(  # int8 as the server runs it on this CPU
            str(folder / MODEL_FILE), faithful_int8(options), providers=["CPUExecutionProvider"]
        )
        specs[name] = ModelSpec.from_file(folder / SPEC_FILE)
    rng = np.random.default_rng(0)
    results: dict[str, dict[int, float]] = {name: {} for name in folders}
    for batch in batches:
        inputs = {
            name: rng.integers(0, 256, (batch, 3, spec.crop_size, spec.crop_size), dtype=np.uint8)
            for name, spec in specs.items()
        }
        times: dict[str, list[float]] = {name: [] for name in folders}
        for round_ in range(warmup + rounds):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, {"pixels": inputs[name]})
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - started) * 1000 / batch)
        for name in folders:
            results[name][batch] = statistics.median(times[name])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--models", required=True, help="comma-separated model names (version 1)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--rounds", type=int, default=30, help="timed runs per model and batch size")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    results = measure({n: args.repository / n / "1" for n in names}, args.threads, batches, args.rounds)
    print(f"median ms per image, {args.threads} thread(s), {args.rounds} runs each, interleaved")
    print("model".ljust(16) + "".join(f"bs{b}".rjust(10) for b in batches) + "MB".rjust(8))
    for name in names:
        size = (args.repository / name / "1" / MODEL_FILE).stat().st_size / 1e6
        row = "".join(f"{results[name][b]:10.2f}" for b in batches)
        print(name.ljust(16) + row + f"{size:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
