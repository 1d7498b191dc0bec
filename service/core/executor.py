"""The executor: one run of one model for one request. Lease the ready version, check its queue has
room, preprocess each image with *that version's* backend on the pool, submit the rows to its batcher,
release the lease. Direct requests and every cascade stage run through here, so each run is observed
the same way (preprocess metrics, the live figures `auto` predicts from)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from service.core.live import LiveFigures
from service.core.outcomes import InferOutcome, batch_timings, stack_outputs
from service.errors import Overloaded
from service.lifecycle.leases import Leases
from service.lifecycle.records import ModelEntry, ModelRecord
from service.metrics import Metrics
from service.preprocess.formats import DecodeLimits
from service.preprocess.pool import PreprocessPool


class Executor:
    def __init__(
        self,
        leases: Leases,
        pool: PreprocessPool,
        limits: DecodeLimits,
        metrics: Metrics,
        live: LiveFigures,
    ) -> None:
        self._leases = leases
        self._pool = pool
        self._limits = limits
        self._metrics = metrics
        self._live = live

    async def run_images(
        self, record: ModelRecord, version: int | None, images: Sequence[bytes], deadline: float
    ) -> InferOutcome:
        """Encoded images -> this model's preprocessing -> its batcher."""
        start = time.monotonic()
        entry = await self._leases.acquire(record, version, deadline)
        try:
            check_queue_room(entry, len(images))  # before spending CPU on decoding
            backend = entry.backend
            assert backend is not None and entry.batcher is not None
            with self._held(entry, len(images)):
                done = await self._pool.run(backend.prepare, [(data, self._limits) for data in images])
                for _, seconds in done:
                    self._metrics.observe_preprocess(entry.name, seconds)
                preprocess_s = time.monotonic() - start
                self._live.observe_preprocess(entry.name, preprocess_s / len(images))
                results = await entry.batcher.submit([row for row, _ in done], deadline=deadline)
        finally:
            self._leases.release(entry)
        self._live.observe_latency(entry.name, time.monotonic() - start)
        return InferOutcome(entry, stack_outputs(results), batch_timings(results, preprocess_s, start))

    async def run_pixels(
        self, record: ModelRecord, version: int | None, pixels: np.ndarray, deadline: float
    ) -> InferOutcome:
        """Rows already preprocessed by the client (uint8, the model's crop size) -> its batcher."""
        start = time.monotonic()
        entry = await self._leases.acquire(record, version, deadline)
        try:
            assert entry.batcher is not None
            rows = [np.ascontiguousarray(row) for row in pixels]
            with self._held(entry, len(rows)):
                results = await entry.batcher.submit(rows, deadline=deadline)
        finally:
            self._leases.release(entry)
        # Not in the live latencies: `auto` predicts for encoded images, which these skipped.
        return InferOutcome(entry, stack_outputs(results), batch_timings(results, 0.0, start))

    @contextmanager
    def _held(self, entry: ModelEntry, images: int) -> Iterator[None]:
        """Count `images` in the model's load ratio while this run holds them (preprocessing,
        queued, running): what autoscaling reads (service/metrics.py, LoadRatio)."""
        assert entry.batcher is not None
        config = entry.batcher.config
        self._metrics.load.enter(entry.name, images, config.max_batch_size * config.instances)
        try:
            yield
        finally:
            self._metrics.load.leave(entry.name, images)


def check_queue_room(entry: ModelEntry, count: int = 1) -> None:
    """Raise Overloaded when `count` more images would not fit in the model's queue now. Cheap:
    admission calls it before a request body is read, the executor again before decoding."""
    batcher = entry.batcher
    if batcher is None:  # not loaded yet: it will be empty
        return
    if batcher.queue_depth + count > batcher.config.max_queue_size:
        raise Overloaded(
            f"model '{batcher.name}' queue is full ({batcher.queue_depth} images waiting)",
            retry_after=batcher.retry_after(count),
        )
