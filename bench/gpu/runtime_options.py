"""The CUDA session settings still unmeasured, each through the service's runtime as the engine uses it
(check.py's `runtime_options` phase; bench/gpu/README.md):
- `bucket_sessions`: the defaults (a session per bucket, one intra-op thread per CUDA session);
- `threads_per_core`: `cuda_intra_op_threads=0`, every session a pool of one thread per core (before);
- `one_session`: one session for every bucket (one arena: the memory that bucket sessions cost);
- `shared_arena`: one CUDA arena for every session (`cuda_shared_arena`);
- `cuda_graphs`: a CUDA graph per bucket (`cuda_graphs`; cuts the launch cost at batch 1).
Each variant runs in a process of its own (spawned), so that its GPU memory is its own and an arena
registered with ORT's environment cannot leak into the next: GPU memory of the process after warm-up
and after the load, the warm-up's seconds, median ms at batch 1, mean ms per batch over random sizes.
Keep what is faster at equal memory."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "bucket_sessions": {},
    "threads_per_core": {"cuda_intra_op_threads": 0},
    "one_session": {"bucket_sessions": "off"},
    "shared_arena": {"cuda_shared_arena": True},
    "cuda_graphs": {"cuda_graphs": True},
}
OUTPUTS = ["logits", "probabilities"]


def measure_variant(
    model_path: str, crop: int, gmacs: float, device: str, overrides: dict[str, Any], steps: int
) -> dict[str, Any]:
    """In the child process: the runner warmed as the engine warms it, then timed and weighed."""
    import psutil

    from bench.gpu.device_state import gpu_memory_used_mib, process_gpu_memory_mib
    from service.runtime.session import OrtRunner, RuntimeOptions, warmup_batch_sizes
    from service.settings import Settings

    # Buckets and IO binding as CUDA gets them by default, asked for: the CPU dry run goes the same way.
    settings = Settings(device=device, batch_buckets="on", io_binding="on", cuda_tf32=False, **overrides)
    used_before = gpu_memory_used_mib()  # the device's total, before this process holds any of it
    started = time.perf_counter()
    runner = OrtRunner(Path(model_path), RuntimeOptions.from_settings(settings), OUTPUTS)
    max_batch = settings.batch_size_for(runner.provider, gmacs)
    runner.warm_up((3, crop, crop), warmup_batch_sizes(max_batch), runs=2)
    warm_up_s = time.perf_counter() - started
    pid = os.getpid()
    used_warm = gpu_memory_used_mib()
    rng = np.random.default_rng(0)
    rows = list(rng.integers(0, 256, (max_batch, 3, crop, crop), dtype=np.uint8))
    one: list[float] = []
    for _ in range(max(5, steps // 4)):
        start = time.perf_counter()
        runner.run_items(rows[:1])
        one.append(time.perf_counter() - start)
    sizes = random.Random(0)
    total = 0.0
    for _ in range(steps):
        n = sizes.randint(1, max_batch)
        start = time.perf_counter()
        runner.run_items(rows[:n])
        total += time.perf_counter() - start
    return {
        "overrides": overrides,
        "provider": runner.provider,
        "intra_op_threads": runner.intra_op_threads,
        "bucket_sessions": runner.use_bucket_sessions,
        "cuda_graphs": not runner.serves_extra_outputs,
        "max_batch": max_batch,
        "warm_up_s": warm_up_s,
        # What this process added to the device's memory in use (None without nvidia-smi: the CPU dry
        # run); the device's totals, not nvidia-smi's per-process figure, which a container's PID
        # namespace can leave empty. That one is recorded beside it.
        "gpu_mib": _delta(used_before, used_warm),
        "gpu_mib_after_load": _delta(used_before, gpu_memory_used_mib()),
        "process_gpu_mib": process_gpu_memory_mib(pid),
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
        "batch_1_ms": float(np.median(one[2:] or one) * 1000),
        "random_sizes_mean_ms": total * 1000 / steps,
        "steps": steps,
    }


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def runtime_options(
    model_path: Path,
    crop: int,
    gmacs: float,
    device: str,
    steps: int,
    left_s: Callable[[], float],
    variant_s: float,
    results: dict[str, Any],
    saved: Callable[[], None],
) -> dict[str, Any]:
    """Every variant in turn, each in a fresh process, while `left_s()` covers `variant_s`; each result
    (or its failure, or its skip) goes into `results` and `saved` as soon as it is known."""
    context = multiprocessing.get_context("spawn")
    for name, overrides in VARIANTS.items():
        if left_s() < variant_s:
            results[name] = f"skipped: time ({max(left_s(), 0.0):.0f} s left, needs about {variant_s:.0f} s)"
            continue
        results[name] = "running"
        saved()
        with context.Pool(1) as pool:
            job = pool.apply_async(measure_variant, (str(model_path), crop, gmacs, device, overrides, steps))
            try:
                results[name] = job.get(timeout=min(variant_s * 3, max(left_s() - 5, variant_s)))
            except Exception as exc:  # a variant ORT refuses (or a timeout) costs only its own figure
                results[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        saved()
    return results
