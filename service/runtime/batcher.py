"""Dynamic batcher: a bounded per-model queue of images, batch formation, and fan-out of results.

Semantics (Triton's): no added latency when idle (`max_queue_delay_s` only holds a batch
that is not full, counted from its oldest item's arrival); a full queue rejects at once; an item whose
deadline passes while queued, or whose caller was cancelled, is dropped and never run; a failing batch
fails only its own callers. Inference runs in one worker thread the batcher owns, never on the loop.

An item is either a ready row or an `Encoded` image: the worker thread that runs its batch prepares it
first (decode, resize, crop), so on the CPU one thread carries an image from bytes to scores with no
hand-off between threads, and an image that fails to decode fails only its own caller.

The queue's bookkeeping (item states, deadlines, tombstones) is batch_queue.py's; this module forms
batches from it and runs them. A batch that holds high-priority images carries only as many others as
keep its measured cost near theirs alone (batch_costs.py), and with `high_lane` a runner beyond
`instances` takes batches of high-priority images alone when every instance is busy: a person's photo
waits neither for a bulk job's batch to finish nor inside one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidArgument,
    NotReady,
    Overloaded,
)
from service.runtime.batch_config import BatcherConfig
from service.runtime.batch_costs import BatchCosts
from service.runtime.batch_expiry import QueueExpiry
from service.runtime.batch_queue import BatchQueue, Encoded, Item, Payload, QueueObserver
from service.runtime.batch_run import run_batch
from service.runtime.outputs import NOTHING, Wanted, item_rows
from service.runtime.priorities import DEFAULT, Priority, queue_limit
from service.runtime.runner import BatchRunner, Runner, as_runner

__all__ = ["Batcher", "BatcherConfig", "BatchObserver", "BatchRunner", "Runner"]

log = logging.getLogger(__name__)

_EWMA_ALPHA = 0.2
BEFORE_QUEUED = "deadline passed before the request was queued"
_MIN_RETRY_AFTER_S = 0.1
_UNKNOWN_RETRY_AFTER_S = 1.0


class BatchObserver(QueueObserver, Protocol):
    def batch_completed(
        self, model: str, size: int, inference_s: float, prepare_s: float = 0.0, output_s: float = 0.0
    ) -> None: ...
    def lane_batch(self, model: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ItemResult:
    outputs: dict[str, np.ndarray]  # this item's rows (views into the batch's outputs)
    queue_s: float  # from submit to its batch starting
    inference_s: float  # its batch's run time
    batch_size: int
    prepare_s: float = 0.0  # preparing this item in the batch's thread (Encoded items only)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Batcher:
    """One model's queue and batch loop. Create anywhere, `start()` inside the running event loop."""

    def __init__(
        self,
        name: str,
        runner: Runner | BatchRunner,
        config: BatcherConfig,
        observer: BatchObserver | None = None,
        *,
        item_shape: tuple[int, ...] | None = None,
        item_dtype: str = "uint8",
    ) -> None:
        """With `item_shape`, submit rejects items of another shape or dtype (InvalidArgument), so one
        caller's malformed input cannot fail the batch it would share with others."""
        self.name = name
        self._item_shape = item_shape
        self._item_dtype = np.dtype(item_dtype)
        self.runner = runner  # public (a property): tests and reloads may swap it
        self.config = config
        self._observer = observer
        self._queue = BatchQueue(name, config.max_queue_size, observer, config.priority_aging_s)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wake_threshold = 1
        self._wake_on_high = False  # the loop waits for a runner: a high item may take the lane
        self._item_s: float | None = None  # moving average of a worker's seconds per item (run + prepare)
        self._batch_s: float | None = None  # moving average of inference seconds per batch
        self.costs = BatchCosts(config.max_batch_size, config.high_fill_slack, config.high_fill_unmeasured)
        self._executor = ThreadPoolExecutor(
            max_workers=config.instances + int(config.high_lane), thread_name_prefix=f"batcher-{name}"
        )
        self.batches_run = 0
        self.batches_failed = 0
        self.items_run = 0
        self.items_rejected = 0
        self.lane_batches = 0  # batches run on the high-priority lane
        self._expiry = QueueExpiry(self._queue)  # the deadlines of enqueue's items

    @property
    def queue_depth(self) -> int:
        return self._queue.depth

    @property
    def items_expired(self) -> int:
        return self._queue.items_expired

    @property
    def items_cancelled(self) -> int:
        return self._queue.items_cancelled

    @property
    def recent_batch_s(self) -> float | None:
        """Moving average of one batch's inference time (None before the first batch)."""
        return self._batch_s

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"batcher {self.name!r} already started")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._loop_finished)

    def retry_after(self, extra_items: int = 1) -> float:
        """Seconds until the queue has drained enough for `extra_items` more, from recent batches."""
        if self._item_s is None:
            return _UNKNOWN_RETRY_AFTER_S
        return max(_MIN_RETRY_AFTER_S, (self._queue.depth + extra_items) * self._item_s)

    def room(self, count: int = 1, priority: Priority = DEFAULT) -> bool:
        """Whether `count` more items of `priority` fit in the queue now (priorities.queue_limit)."""
        return self._queue.depth + count <= queue_limit(self.config.max_queue_size, priority)

    async def submit(
        self,
        items: Sequence[Payload],
        deadline: float | None = None,
        priority: Priority = DEFAULT,
        wanted: Wanted = NOTHING,
    ) -> list[ItemResult]:
        """Queue `items` atomically at `priority` and return their results in order.

        `items`: ready rows, or Encoded images that the batch's thread prepares first.
        `wanted`: extra outputs (features, maps) these items ask for; they share batches with items
        that ask for other ones or none (the run computes the union, each item gets its own).

        Raises Overloaded (queue full for that priority; nothing queued), DeadlineExceeded (`deadline`,
        a time.monotonic() value, passed before all items ran), InferenceFailed (a batch holding one of
        them failed), an Encoded item's own error (it could not be prepared), NotReady (not started or
        shutting down). On any failure the request's still-queued items are dropped.
        """
        loop = self._loop
        if self._closing:
            raise NotReady("shutting down")
        if loop is None:
            raise NotReady(f"model {self.name!r} is not ready (batcher not started)")
        n = len(items)
        if n == 0:
            return []
        cfg = self.config
        if n > cfg.max_queue_size:
            raise InvalidArgument(f"request has {n} images; at most {cfg.max_queue_size} fit in the queue")
        if self._item_shape is not None:
            self._check_items(items)
        queue = self._queue
        if not self.room(n, priority):
            self.items_rejected += n
            raise Overloaded(
                f"model {self.name!r} is overloaded: {queue.depth} of {cfg.max_queue_size} queue slots taken",
                retry_after=self.retry_after(n),
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            queue.count_expired(n)
            raise DeadlineExceeded(BEFORE_QUEUED)

        futures: list[asyncio.Future[ItemResult]] = [loop.create_future() for _ in items]
        queued = [
            Item(array, future, now, deadline, priority, wanted)
            for array, future in zip(items, futures, strict=True)
        ]
        queue.add(queued)
        waiter = self._waiter
        wake = queue.depth >= self._wake_threshold or (self._wake_on_high and priority is Priority.HIGH)
        if waiter is not None and wake and not waiter.done():
            waiter.set_result(None)

        timer = loop.call_later(deadline - now, queue.expire, queued) if deadline is not None else None
        try:
            if n == 1:
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            queue.drop(queued)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def enqueue(self, items: Sequence[Item]) -> None:
        """Queue ready rows whose callers do not await: each item's `future` is an Answer that the batch
        calls (service/split/grouped.py answers a whole batch's calls from it). The caller has checked
        `room` and the rows' shape. Instead of a timer per call, the batcher's one expiry timer answers
        the items whose deadline passes while they are queued. Raises NotReady (not started, closing)."""
        loop = self._loop
        if self._closing:
            raise NotReady("shutting down")
        if loop is None:
            raise NotReady(f"model {self.name!r} is not ready (batcher not started)")
        if not items:
            return
        queue = self._queue
        queue.add(list(items))
        waiter = self._waiter
        high = self._wake_on_high and any(item.priority is Priority.HIGH for item in items)
        if waiter is not None and (queue.depth >= self._wake_threshold or high) and not waiter.done():
            waiter.set_result(None)
        deadlines = [item.deadline for item in items if item.deadline is not None]
        if deadlines:
            self._expiry.arm(min(deadlines))

    def count_expired(self, count: int) -> None:
        """Items whose deadline had passed before they could be queued (answered by the caller)."""
        self._queue.count_expired(count)

    def drop(self, items: Sequence[Item]) -> None:
        """Callers that gave up: their items still queued are dropped and answered cancelled."""
        self._queue.drop(items)

    def _check_items(self, items: Sequence[Payload]) -> None:
        shape, dtype = self._item_shape, self._item_dtype
        for index, array in enumerate(items):
            if isinstance(array, Encoded):
                continue  # its row is made to the model's shape
            if array.shape != shape or array.dtype != dtype:
                raise InvalidArgument(
                    f"input {index} is {array.dtype} {array.shape}; model {self.name!r} takes {dtype} {shape}"
                )

    async def close(self, drain: bool = True) -> None:
        """Stop accepting; run what is queued (or, with drain=False, fail it with NotReady); stop."""
        self._closing = True
        if not drain or self._task is None:
            self._queue.fail_all(lambda: NotReady("shutting down"))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._task is not None:
            # wait() neither raises the loop's own error (logged by _loop_finished) nor cancels it.
            await asyncio.wait([self._task])
        self._expiry.cancel()
        self._executor.shutdown(wait=False)

    async def _wait(self, threshold: int, max_wait_s: float | None, on_high: bool = False) -> None:
        """Sleep until the queue holds `threshold` live items, close() is called, `max_wait_s` passes,
        a runner finishes its batch, or (`on_high`) a high-priority item arrives."""
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._wake_threshold = threshold
        self._wake_on_high = on_high
        handle = self._loop.call_later(max_wait_s, _wake, waiter) if max_wait_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            self._wake_on_high = False
            if handle is not None:
                handle.cancel()

    def _runner_freed(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the batch loop ---

    async def _run_loop(self) -> None:
        cfg = self.config
        queue = self._queue
        loop = self._loop
        assert loop is not None
        # A batch is taken only when a runner is free, so items that arrive while all are busy
        # gather into the next batch.
        free = cfg.instances
        lane_free = cfg.high_lane
        running: set[asyncio.Task[None]] = set()

        def started(batch: list[Item], lane: bool) -> None:
            task = loop.create_task(self._execute(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: finished(lane))

        def finished(lane: bool) -> None:
            nonlocal free, lane_free
            if lane:
                lane_free = True
            else:
                free += 1
            self._runner_freed()

        try:
            while True:
                if queue.depth == 0:
                    if self._closing:
                        return
                    await self._wait(1, None)
                    continue
                if cfg.max_queue_delay_s > 0 and queue.depth < cfg.max_batch_size and not self._closing:
                    oldest = queue.oldest()
                    if oldest is not None:
                        remaining = oldest.enqueued_at + cfg.max_queue_delay_s - time.monotonic()
                        if remaining > 0:
                            await self._wait(cfg.max_batch_size, remaining)
                            continue
                if free == 0:
                    if lane_free and queue.depths[Priority.HIGH] > 0:
                        batch = queue.take(cfg.max_batch_size, high_only=True)
                        if batch:
                            lane_free = False
                            self.lane_batches += 1
                            if self._observer is not None:
                                self._observer.lane_batch(self.name)
                            started(batch, lane=True)
                        continue
                    # Woken by a runner finishing, close(), or (lane free) a high item; not by others.
                    await self._wait(cfg.max_queue_size + 1, None, on_high=lane_free)
                    continue
                batch = queue.take(cfg.max_batch_size, self.costs.fill)
                if batch:
                    free -= 1
                    started(batch, lane=False)
        finally:
            if running:
                await asyncio.wait(running)

    async def _execute(self, batch: list[Item]) -> None:
        assert self._loop is not None
        n = len(batch)
        started = time.monotonic()
        self.batches_run += 1
        self.items_run += n
        try:
            ran = await self._loop.run_in_executor(
                self._executor,
                partial(run_batch, self._runs, self.name),
                [item.array for item in batch],
                [item.wanted for item in batch],
            )
        except asyncio.CancelledError:
            self._fail(batch, lambda: NotReady("shutting down"))
            raise
        except Exception as exc:
            self.batches_failed += 1
            error_id = secrets.token_hex(4)
            log.error("batch failed model=%s batch_size=%d error_id=%s", self.name, n, error_id, exc_info=exc)
            message = f"inference failed on model {self.name!r} (error id {error_id})"
            self._fail(batch, lambda: InferenceFailed(message))
            return
        prepared: list[tuple[Item, float]] = []
        for item, outcome in zip(batch, ran.prepared, strict=True):
            if isinstance(outcome, BaseException):
                if not item.future.done():
                    item.future.set_exception(outcome)
            else:
                prepared.append((item, outcome))
        if not prepared:
            return
        n, inference_s = len(prepared), ran.inference_s
        # A queued item costs its batch's thread its share of the run and its own preparation.
        worker_s = inference_s + sum(seconds for _, seconds in prepared)
        self.costs.observe(n, worker_s)
        per_item = worker_s / n
        self._item_s = (
            per_item if self._item_s is None else self._item_s + _EWMA_ALPHA * (per_item - self._item_s)
        )
        self._batch_s = (
            inference_s
            if self._batch_s is None
            else self._batch_s + _EWMA_ALPHA * (inference_s - self._batch_s)
        )
        scatter_started = time.perf_counter()
        for i, (item, prepare_s) in enumerate(prepared):
            future = item.future
            if not future.done():
                rows = item_rows(ran.outputs, i, item.wanted)
                future.set_result(ItemResult(rows, started - item.enqueued_at, inference_s, n, prepare_s))
        if self._observer is not None:
            prepare_s = sum(seconds for _, seconds in prepared)
            output_s = time.perf_counter() - scatter_started
            self._observer.batch_completed(self.name, n, inference_s, prepare_s, output_s)

    @property
    def runner(self) -> Runner | BatchRunner:
        return self._runner

    @runner.setter
    def runner(self, runner: Runner | BatchRunner) -> None:
        self._runner = runner
        self._runs: Runner = as_runner(runner)  # what the worker calls: the whole contract

    @staticmethod
    def _fail(batch: list[Item], make_error: Callable[[], Exception]) -> None:
        # One exception object per caller: a shared one would collect every raiser's traceback.
        for item in batch:
            if not item.future.done():
                item.future.set_exception(make_error())

    def _loop_finished(self, task: asyncio.Task[None]) -> None:
        """If the loop dies (a bug), fail what is queued rather than let callers hang."""
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("batch loop crashed model=%s", self.name, exc_info=task.exception())
            self._closing = True
            self._queue.fail_all(lambda: NotReady(f"model {self.name!r} batcher stopped"))
