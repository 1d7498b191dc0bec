"""Warming a model's sessions before it serves: every batch size it will meet, run a few times (first runs
allocate memory and pick kernels; CUDA graphs are captured after a few ordinary runs of each graph id)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.runtime.overlap import OverlapSession
from service.runtime.session_buffers import BufferSets


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size: the shapes the batcher will produce most."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


def _random_batch(rng: np.random.Generator, size: int, input_shape: tuple[int, int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=(size, *input_shape), dtype=np.uint8)


def warm_up_plain(
    run: Callable[[np.ndarray], object],
    overlap: OverlapSession | None,
    input_shape: tuple[int, int, int],
    batch_sizes: list[int],
    runs: int,
    concurrent: int,
) -> None:
    """The plain session call (`run`) at each size; the one-thread session too, `concurrent` at once."""
    rng = np.random.default_rng(0)
    batches = [_random_batch(rng, size, input_shape) for size in batch_sizes]
    for batch in batches:
        for _ in range(runs):
            run(batch)
    if overlap is not None:  # first runs allocate memory and pick kernels there too
        overlap.warm_up(batches, runs, concurrent)


def warm_up_bound(
    sets: BufferSets, input_shape: tuple[int, int, int], batch_sizes: list[int], runs: int, count: int
) -> None:
    """`count` buffer sets, each bound and run at every size here, so that no request meets a first-time
    shape or address; with CUDA graphs each (set, size) gets its graph id and is captured here."""
    rng = np.random.default_rng(0)
    runs = max(runs, 3) if sets.graphs.enabled else max(1, runs)
    for _ in range(max(1, count)):
        buffers = sets.new_set(warm=True)
        for size in batch_sizes:
            bound = sets.bind(buffers, size, input_shape, sets.graphs.for_warm_up())
            bound.load(_random_batch(rng, size, input_shape))
            for _ in range(runs):
                bound.run(size)
        sets.give_back(buffers)
