"""The executor: one run of one model for one request. Lease the ready version, ask the response cache
(core/cache) for the inputs it has seen, check the queue has room for the rest, preprocess each of them
with *that version's* backend (on the CPU in the thread that runs its batch, else on the pool first),
submit them to its batcher at the request's priority, keep the new answers, release the lease. Direct
requests and every cascade stage run through here, so each run is observed the same way (preprocess
metrics, the live figures `auto` predicts from) and cached under the model that really ran."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from service.core.cache import Lookup, ResponseCache
from service.core.cache.keys import Options
from service.core.cache.rows import Rows
from service.core.explain import check_offers
from service.core.live import LiveFigures
from service.core.outcomes import InferOutcome, batch_timings, stack_rows
from service.errors import Overloaded, ServiceError
from service.lifecycle.leases import Leases
from service.lifecycle.records import ModelEntry, ModelRecord
from service.metrics import Metrics
from service.preprocess.backends import PreprocessBackend
from service.preprocess.formats import DecodeLimits
from service.preprocess.pool import PreprocessPool
from service.runtime.batcher import Encoded, ItemResult
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
                with self._held(entry, len(todo)):
                    results, preprocess_s = await self._prepare_and_run(entry, images, todo, deadline, run)
            outcome = await self._answer(entry, lookup, todo, results, preprocess_s, start)
        finally:
            self._leases.release(entry)
        if todo:  # cache hits say nothing of what a run of this model takes
            self._live.observe_latency(entry.name, time.monotonic() - start)
        return outcome

    async def _prepare_and_run(
        self, entry: ModelEntry, images: Sequence[bytes], todo: list[int], deadline: float, run: RunOptions
    ) -> tuple[list[ItemResult], float]:
        """Preprocess and run the images `todo`; returns their results and the preprocessing seconds."""
        backend, batcher = entry.backend, entry.batcher
        assert backend is not None and batcher is not None
        limits = self._limits
        # An error names the image by its place in the request (cached ones counted) when it has several.
        several = len(images) > 1
        if backend.in_batch:
            encoded = [
                Encoded(images[i], partial(_prepare, backend, limits, i if several else None)) for i in todo
            ]
            results = await batcher.submit(
                encoded, deadline=deadline, priority=run.priority, wanted=run.wanted
            )
            seconds = [result.prepare_s for result in results]
            preprocess_s = sum(seconds)
        else:
            start = time.monotonic()
            jobs = [(images[i], limits) for i in todo]
            done = await self._pool.run(backend.prepare, jobs, int(run.priority), todo if several else ())
            seconds = [s for _, s in done]
            preprocess_s = time.monotonic() - start
            results = await batcher.submit(
                [row for row, _ in done], deadline=deadline, priority=run.priority, wanted=run.wanted
            )
        for one in seconds:
            self._metrics.observe_preprocess(entry.name, one)
        self._live.observe_preprocess(entry.name, sum(seconds) / len(seconds))
        return results, preprocess_s

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
                with self._held(entry, len(todo_rows)):
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


def _prepare(backend: PreprocessBackend, limits: DecodeLimits, index: int | None, data: bytes) -> np.ndarray:
    """One image of a request, in the batch's thread; an error names the image when there are several."""
    try:
        return backend.prepare(data, limits)
    except ServiceError as exc:
        if index is not None:
            exc.about_image(index)
        raise


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
