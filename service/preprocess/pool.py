"""The preprocessing thread pool: decoding and resizing run here, off the event loop, overlapping the
batch that is running. Bounded across all requests and models: beyond `max_pending_preprocess` images
waiting or being worked on, a request is refused at once (503) instead of queueing without end.

Images reach the threads in priority order (the rule of service/runtime/priorities.py: a smaller
priority first, oldest first within one, and an image that has waited `aging_s` ahead of higher levels
in its share): at most one image per thread is handed to the executor at a time, the rest wait in `_Slots`. So
a request of a person is decoded next, not after a bulk job's backlog. With `high_lane`, one thread more
than `workers` decodes high-priority images alone when every other thread is busy: a person's photo does
not wait for a bulk job's image to finish decoding either (the batcher's lane, runtime/batcher.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.errors import Overloaded, ServiceError
from service.runtime.priorities import AgedShare

T = TypeVar("T")
DEFAULT_PRIORITY = 1  # service/runtime/priorities.py: 0 high, 1 normal, 2 low
HIGH_PRIORITY = 0


class _Waiter:
    __slots__ = ("priority", "since", "future")

    def __init__(self, priority: int, future: asyncio.Future[bool]) -> None:
        self.priority = priority
        self.since = time.monotonic()
        self.future = future  # set to whether the slot handed over is the lane


class _Slots:
    """`count` slots handed out in priority order (see the module), and with `lane` one more for
    high-priority images only; event loop only. `acquire` says whether it handed out the lane."""

    def __init__(self, count: int, aging_s: float, lane: bool = False) -> None:
        self._free = count
        self._aging_s = aging_s
        self._lane_free = lane
        self._waiting: list[_Waiter] = []
        self.aged_share = AgedShare()

    async def acquire(self, priority: int) -> bool:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self.aged_share.handed_out(passed=False)
            return False
        if priority == HIGH_PRIORITY and self._lane_free:
            self._lane_free = False
            return True
        waiter = _Waiter(priority, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # handed a slot as it was cancelled: pass it on
            raise

    def release(self, lane: bool = False) -> None:
        while self._waiting:
            passes = False
            if lane:
                high = [w for w in self._waiting if w.priority == HIGH_PRIORITY]
                if not high:
                    break
                chosen = min(high, key=lambda w: w.since)
            else:
                now = time.monotonic()
                first = min(self._waiting, key=lambda w: (w.priority, w.since))
                aged = [w for w in self._waiting if now - w.since >= self._aging_s]
                oldest_aged = min(aged, key=lambda w: w.since) if aged else None
                chosen, passes = self.aged_share.pick(first, oldest_aged)
            self._waiting.remove(chosen)
            if not chosen.future.done():
                self.aged_share.handed_out(passes)
                chosen.future.set_result(lane)
                return
        if lane:
            self._lane_free = True
        else:
            self._free += 1


class PreprocessPool:
    def __init__(self, workers: int, max_pending: int, aging_s: float = 1.0, high_lane: bool = False) -> None:
        self.workers = workers
        self._max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(
            max_workers=workers + int(high_lane), thread_name_prefix="preprocess"
        )
        self._slots = _Slots(workers, aging_s, high_lane)

    @property
    def backlog(self) -> int:
        """Images being preprocessed or waiting for a thread, across all models."""
        return self._pending

    async def run(
        self,
        function: Callable[..., T],
        jobs: list[tuple[Any, ...]],
        priority: int = DEFAULT_PRIORITY,
        places: Sequence[int] = (),
    ) -> list[tuple[T, float]]:
        """`function(*job)` for each job, in order, each with its seconds, at `priority` (smaller first).
        The first error by image order is raised, naming the image by `places` (each job's place in its
        request; empty: unnamed). Raises Overloaded beyond the bound."""
        if self._pending + len(jobs) > self._max_pending:
            raise Overloaded(f"{self._pending} images are waiting to be decoded", retry_after=1.0)
        self._pending += len(jobs)
        try:
            done = await asyncio.gather(
                *(self._one(function, job, priority) for job in jobs), return_exceptions=True
            )
        finally:
            self._pending -= len(jobs)
        results: list[tuple[T, float]] = []
        for index, item in enumerate(done):
            if isinstance(item, ServiceError):
                if places:
                    item.about_image(places[index])
                raise item
            if isinstance(item, BaseException):
                raise item
            results.append(item)
        return results

    async def _one(self, function: Callable[..., T], job: tuple[Any, ...], priority: int) -> tuple[T, float]:
        lane = await self._slots.acquire(priority)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, _timed, function, job)
        finally:
            self._slots.release(lane)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(function: Callable[..., T], job: tuple[Any, ...]) -> tuple[T, float]:
    start = time.monotonic()
    result = function(*job)
    return result, time.monotonic() - start
