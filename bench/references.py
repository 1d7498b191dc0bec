"""The references the service is measured against, taken in the same run on the same machine.

1. bare ONNX Runtime: the exported graph on ready uint8 batches, batch sizes 1..max; best images/s.
2. the pipeline limit: cores / (single-thread preprocessing ms per image + inference core-ms per
   image), where inference core-ms is the one-thread session's best ms per image over batch sizes
   (with one thread and spinning off, wall time is core time).
3. the measured pipeline: the same work done on every core at once, in this process, with no serving
   at all. What the cores really give the essential work (caches and memory are shared), below the
   computed limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.stats import median
from service.preprocess.images import DecodeLimits, PreprocessSpec, configure_pillow, preprocess
from service.runtime.int8_kernels import faithful_int8

MIN_REPEATS = 3


def _timed_runs(
    fn: Callable[[], object], budget_s: float, max_repeats: int = 200
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per call: one unmeasured warm-up call, then at least MIN_REPEATS within
    the budget. CPU time is the whole process's, so it counts every thread the call used; unlike
    wall time it is not inflated when other jobs on a shared machine take turns on the cores."""
    fn()
    wall: list[float] = []
    cpu: list[float] = []
    end = time.perf_counter() + budget_s
    while len(wall) < MIN_REPEATS or (time.perf_counter() < end and len(wall) < max_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def session(model_path: Path, threads: int, spinning: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    # The server's int8 rule (no fused kernels where they saturate), so that bare and service agree.
    return ort.InferenceSession(
        str(model_path), sess_options=faithful_int8(so), providers=["CPUExecutionProvider"]
    )


def bare_ort(
    model_path: Path, crop: int, batch_sizes: Sequence[int], threads: int, spinning: bool, budget_s: float
) -> dict[str, Any]:
    """Median ms per batch and images/s at each batch size, and the best images/s."""
    sess = session(model_path, threads, spinning)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    per_batch: dict[str, dict[str, float]] = {}
    for size in batch_sizes:
        batch = rng.integers(0, 256, size=(size, 3, crop, crop), dtype=np.uint8)
        wall, cpu = _timed_runs(partial(sess.run, ["probabilities"], {name: batch}), budget_s)
        ms = median(wall) * 1000
        per_batch[str(size)] = {
            "ms_per_batch": ms,
            "images_per_s": size * 1000 / ms,
            "ms_per_image": ms / size,
            "cpu_ms_per_image": median(cpu) * 1000 / size,
        }
    best = max(per_batch.items(), key=lambda kv: kv[1]["images_per_s"])
    return {
        "threads": threads,
        "spinning": spinning,
        "batches": per_batch,
        "best_batch": int(best[0]),
        "best_images_per_s": best[1]["images_per_s"],
    }


def preprocess_cost(bodies: Sequence[bytes], spec: PreprocessSpec, budget_s: float) -> dict[str, float]:
    """The service's own preprocessing, one thread: median ms per image over the bodies."""
    configure_pillow()
    limits = DecodeLimits()
    wall: list[float] = []
    cpu: list[float] = []
    for body in bodies:
        w, c = _timed_runs(partial(preprocess, body, spec, limits), budget_s / len(bodies))
        wall += w
        cpu += c
    return {"ms": median(wall) * 1000, "cpu_ms": median(cpu) * 1000, "samples": len(wall)}


def pipeline_limit(cores: int, preprocess_ms: float, inference_core_ms: float) -> float:
    """Images/s the machine's cores allow when every core does preprocessing and inference."""
    return cores * 1000.0 / (preprocess_ms + inference_core_ms)


def pipeline_measured(
    model_path: Path,
    bodies: Sequence[bytes],
    spec: PreprocessSpec,
    workers: int,
    run_size: int,
    seconds: float,
) -> dict[str, float]:
    """`workers` threads, each decoding `run_size` images with the service's preprocessing and running
    them on one shared one-thread session, as the floor server's workers do, for `seconds`."""
    configure_pillow()
    sess = session(model_path, 1)
    name = sess.get_inputs()[0].name
    done = [0] * workers
    stop = time.perf_counter() + seconds

    def work(worker: int) -> None:
        limits = DecodeLimits()
        index = worker
        while time.perf_counter() < stop:
            rows = []
            for _ in range(run_size):
                rows.append(preprocess(bodies[index % len(bodies)], spec, limits))
                index += 1
            sess.run(["probabilities"], {name: np.stack(rows)})
            done[worker] += run_size

    threads = [threading.Thread(target=work, args=(i,), name=f"pipeline-{i}") for i in range(workers)]
    start, start_cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    images = sum(done)
    return {
        "run_size": run_size,
        "images_per_s": images / wall,
        "cpu_ms_per_image": cpu * 1000 / images,
    }
