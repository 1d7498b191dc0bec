"""The queue of one model's batcher: items in arrival order, each with its caller's future, its deadline
and a state. Bookkeeping is single-threaded (event loop only): whoever moves an item out of QUEUED (the
batch loop taking it, the caller's cancellation, its deadline timer, shutdown) adjusts the depth.
Dropped items stay in the deque as tombstones and are skipped when the loop reaches them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded
from service.runtime.outputs import NOTHING, Wanted

QUEUED, TAKEN, DROPPED, EXPIRED, FAILED = range(5)


class QueueObserver(Protocol):
    def item_dequeued(self, model: str, queue_s: float) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def items_expired(self, model: str, count: int) -> None: ...


class Item:
    __slots__ = ("array", "future", "enqueued_at", "deadline", "state", "wanted")

    def __init__(
        self,
        array: np.ndarray,
        future: asyncio.Future[object],
        enqueued_at: float,
        deadline: float | None,
        wanted: Wanted = NOTHING,
    ) -> None:
        self.array = array
        self.wanted = wanted  # extra outputs (features, maps) this item asks of its batch's run
        self.future = future
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.state = QUEUED


class BatchQueue:
    def __init__(self, name: str, max_size: int, observer: QueueObserver | None) -> None:
        self.name = name
        self.max_size = max_size
        self._observer = observer
        self._items: deque[Item] = deque()
        self.depth = 0  # items in state QUEUED
        self.items_expired = 0
        self.items_cancelled = 0

    def add(self, items: list[Item]) -> None:
        self._items.extend(items)
        self.depth += len(items)
        if len(self._items) > 2 * self.max_size + 64:
            self._items = deque(item for item in self._items if item.state == QUEUED)
        self._publish_depth()

    def oldest(self) -> Item | None:
        items = self._items
        while items and items[0].state != QUEUED:
            items.popleft()
        return items[0] if items else None

    def take(self, limit: int) -> list[Item]:
        """Pop up to `limit` live items; expire or skip the dead ones met on the way."""
        items = self._items
        batch: list[Item] = []
        now = time.monotonic()
        expired = cancelled = 0
        while items and len(batch) < limit:
            item = items.popleft()
            if item.state != QUEUED:
                continue
            future = item.future
            if future.done():  # caller cancelled; its task has not run its handler yet
                item.state = DROPPED
                cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                item.state = EXPIRED
                future.set_exception(DeadlineExceeded("deadline passed while queued"))
                expired += 1
            else:
                item.state = TAKEN
                batch.append(item)
        self.depth -= len(batch) + expired + cancelled
        self.items_cancelled += cancelled
        self.count_expired(expired)
        self._publish_depth()
        if self._observer is not None:
            for item in batch:
                self._observer.item_dequeued(self.name, now - item.enqueued_at)
        return batch

    def drop(self, items: Iterable[Item]) -> None:
        """The caller gave up (cancelled, or another of its items failed): free its queued slots."""
        dropped = 0
        for item in items:
            if item.state == QUEUED:
                item.state = DROPPED
                item.future.cancel()
                dropped += 1
        if dropped:
            self.depth -= dropped
            self.items_cancelled += dropped
            self._publish_depth()

    def expire(self, items: Iterable[Item]) -> None:
        """Deadline timer of one request: answer its still-queued items now, not when a runner frees."""
        expired = cancelled = 0
        for item in items:
            if item.state != QUEUED:
                continue
            if item.future.done():  # caller cancelled; its handler has not run yet
                item.state = DROPPED
                cancelled += 1
            else:
                item.state = EXPIRED
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                expired += 1
        self.items_cancelled += cancelled
        if expired or cancelled:
            self.depth -= expired + cancelled
            self.count_expired(expired)
            self._publish_depth()

    def fail_all(self, make_error: Callable[[], Exception]) -> None:
        for item in self._items:
            if item.state == QUEUED:
                item.state = FAILED
                if not item.future.done():
                    item.future.set_exception(make_error())
        self._items.clear()
        self.depth = 0
        self._publish_depth()

    def count_expired(self, count: int) -> None:
        if count:
            self.items_expired += count
            if self._observer is not None:
                self._observer.items_expired(self.name, count)

    def _publish_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.name, self.depth)
