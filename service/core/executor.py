"""The executor: one run of one model for one request. Lease the ready version, ask the response cache
(core/cache) for the inputs it has seen, check the queue has room for the rest, preprocess each of them
with *that version's* backend on the pool, submit the rows to its batcher at the request's priority,
keep the new answers, release the lease. Direct requests and every cascade stage run through here, so
each run is observed the same way (preprocess metrics, the live figures `auto` predicts from) and
cached under the model that really ran."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.cache import Lookup, ResponseCache
from service.core.cache.keys import Options
from service.core.cache.rows import Rows
from service.core.explain import check_offers
from service.core.live import LiveFigures
from service.core.outcomes import InferOutcome, batch_timings, stack_rows
from service.errors import Overloaded
from service.lifecycle.leases import Leases
from service.lifecycle.records import ModelEntry, ModelRecord
from service.metrics import Metrics
from service.preprocess.formats import DecodeLimits
from service.preprocess.pool import PreprocessPool
from service.runtime.batcher import ItemResult
from service.runtime.outputs import NOTHING, Wanted
from service.runtime.priorities import DEFAULT, Priority


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a request's images run: their queue priority, the output options the cache keys on
    (None: the request is not cacheable), and the extra outputs (features, maps) they ask for."""

    priority: Priority = DEFAULT
    cache: Options | None = ()
    wanted: Wanted = NOTHING


DEFAULT_RUN = RunOptions()


class Executor:
    def __init__(
        self,
        leases: Leases,
        pool: PreprocessPool,
        limits: DecodeLimits,
        metrics: Metrics,
        live: LiveFigures,
        cache: ResponseCache,
    ) -> None:
        self._leases = leases
        self._pool = pool
        self._limits = limits
        self._metrics = metrics
        self._live = live
        self._cache = cache

    async def run_images(
        self,
        record: ModelRecord,
        version: int | None,
        images: Sequence[bytes],
        deadline: float,
        run: RunOptions = DEFAULT_RUN,
    ) -> InferOutcome:
        """Encoded images -> the cache, then this model's preprocessing -> its batcher for the misses.
        `run.wanted`: extra outputs (features, maps), checked against what this very version offers."""
        start = time.monotonic()
        entry = await self._leases.acquire(record, version, deadline)
        try:
            check_offers(entry, run.wanted)
            lookup = await self._cache.lookup(entry, "image", images, run.cache)
            todo = lookup.misses if lookup is not None else list(range(len(images)))
            results: list[ItemResult] = []
            preprocess_s = 0.0
            if todo:
                check_queue_room(entry, len(todo), run.priority)  # before spending CPU on decoding
                backend = entry.backend
                assert backend is not None and entry.batcher is not None
                jobs = [(images[i], self._limits) for i in todo]
                done = await self._pool.run(backend.prepare, jobs, int(run.priority))
                for _, seconds in done:
                    self._metrics.observe_preprocess(entry.name, seconds)
                preprocess_s = time.monotonic() - start
                self._live.observe_preprocess(entry.name, preprocess_s / len(todo))
                rows = [row for row, _ in done]
                results = await entry.batcher.submit(
                    rows, deadline=deadline, priority=run.priority, wanted=run.wanted
                )
            outcome = await self._answer(entry, lookup, todo, results, preprocess_s, start)
        finally:
            self._leases.release(entry)
        if todo:  # cache hits say nothing of what a run of this model takes
            self._live.observe_latency(entry.name, time.monotonic() - start)
        return outcome

    async def run_pixels(
        self,
        record: ModelRecord,
        version: int | None,
        pixels: np.ndarray,
        deadline: float,
        run: RunOptions = DEFAULT_RUN,
    ) -> InferOutcome:
        """Rows already preprocessed by the client (uint8, the model's crop size) -> its batcher."""
        start = time.monotonic()
        entry = await self._leases.acquire(record, version, deadline)
        try:
            check_offers(entry, run.wanted)
            assert entry.batcher is not None
            rows = [np.ascontiguousarray(row) for row in pixels]
            lookup = await self._cache.lookup(entry, "pixels", rows, run.cache)
            todo = lookup.misses if lookup is not None else list(range(len(rows)))
            results: list[ItemResult] = []
            if todo:
                todo_rows = [rows[i] for i in todo]
                results = await entry.batcher.submit(
                    todo_rows, deadline=deadline, priority=run.priority, wanted=run.wanted
                )
            outcome = await self._answer(entry, lookup, todo, results, 0.0, start)
        finally:
            self._leases.release(entry)
        # Not in the live latencies: `auto` predicts for encoded images, which these skipped.
        return outcome

    async def _answer(
        self,
        entry: ModelEntry,
        lookup: Lookup | None,
        todo: list[int],
        results: list[ItemResult],
        preprocess_s: float,
        start: float,
    ) -> InferOutcome:
        """Merge cached and fresh rows in request order; keep the fresh ones."""
        if lookup is None:
            return InferOutcome(
                entry, stack_rows([r.outputs for r in results]), batch_timings(results, preprocess_s, start)
            )
        fresh: dict[int, Rows] = {i: result.outputs for i, result in zip(todo, results, strict=True)}
        if fresh:
            await self._cache.store(lookup, fresh)
        merged = [row if row is not None else fresh[i] for i, row in enumerate(lookup.rows)]
        cached = tuple(row is not None for row in lookup.rows)
        timings = batch_timings(results, preprocess_s, start)
        return InferOutcome(entry, stack_rows(merged), timings, cached=cached)


def check_queue_room(entry: ModelEntry, count: int = 1, priority: Priority = DEFAULT) -> None:
    """Raise Overloaded when `count` more images of `priority` would not fit in the model's queue now.
    Cheap: admission calls it before a request body is read, the executor again before decoding."""
    batcher = entry.batcher
    if batcher is None:  # not loaded yet: it will be empty
        return
    if not batcher.room(count, priority):
        raise Overloaded(
            f"model '{batcher.name}' queue is full for {priority.label} priority "
            f"({batcher.queue_depth} images waiting)",
            retry_after=batcher.retry_after(count),
        )
