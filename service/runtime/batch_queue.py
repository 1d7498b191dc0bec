"""The queue of one model's batcher: items in arrival order per priority level, each with its caller's
future, its deadline and a state. Bookkeeping is single-threaded (event loop only): whoever moves an item
out of QUEUED (the batch loop taking it, the caller's cancellation, its deadline timer, shutdown) adjusts
the depth. Dropped items stay in their deque as tombstones and are skipped when the loop reaches them.

Which items the next batch takes is priorities.py's rule: the highest level first, oldest first within
a level, aged items ahead of higher levels (oldest first) within their share; a batch that holds
high-priority items takes at most `fill(high)` items of lower levels besides them and those passes
(batch_costs.py)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from service.errors import DeadlineExceeded
from service.runtime.outputs import NOTHING, Wanted
from service.runtime.priorities import DEFAULT, LEVELS, AgedShare, Priority

QUEUED, TAKEN, DROPPED, EXPIRED, FAILED = range(5)
# What a dropped item's row becomes: tombstones stay in their deque until the loop reaches them, and
# should not keep a decoded image (or a view of split mode's shared memory) alive meanwhile.
RELEASED = np.empty(0, np.uint8)


class QueueObserver(Protocol):
    def item_dequeued(self, model: str, queue_s: float) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def items_expired(self, model: str, count: int) -> None: ...
    def priority_depth(self, model: str, priority: str, depth: int) -> None: ...
    def aged_passes(self, model: str, count: int) -> None: ...


class Encoded:
    """An image still encoded, and how to make it a row: `prepare(data)` -> (3, crop, crop) uint8.
    Raises service.errors types for a bad image."""

    __slots__ = ("data", "prepare")

    def __init__(self, data: bytes, prepare: Callable[[bytes], np.ndarray]) -> None:
        self.data = data
        self.prepare = prepare


Payload = np.ndarray | Encoded


class Answer(Protocol):
    """Where an item's result goes: the caller's asyncio future, or (Batcher.enqueue) any object that
    answers a caller that does not await, such as a split-mode call (service/split/grouped.py)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...
    def cancel(self) -> bool: ...


class Item:
    __slots__ = ("array", "future", "enqueued_at", "deadline", "state", "priority", "wanted")

    def __init__(
        self,
        array: Payload,
        future: asyncio.Future[Any] | Answer,
        enqueued_at: float,
        deadline: float | None,
        priority: Priority = DEFAULT,
        wanted: Wanted = NOTHING,
    ) -> None:
        self.array = array
        self.wanted = wanted  # extra outputs (features, maps) this item asks of its batch's run
        self.future = future
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.state = QUEUED
        self.priority = priority


class BatchQueue:
    def __init__(
        self, name: str, max_size: int, observer: QueueObserver | None, aging_s: float = 1.0
    ) -> None:
        self.name = name
        self.max_size = max_size
        self.aging_s = aging_s
        self._observer = observer
        self._levels: dict[Priority, deque[Item]] = {level: deque() for level in LEVELS}
        self.depth = 0  # items in state QUEUED
        self.depths = dict.fromkeys(LEVELS, 0)  # the same, per level
        self._published: dict[Priority, int] = {}  # the per-level depths the observer last got
        self.items_expired = 0
        self.items_cancelled = 0
        self.aged_share = AgedShare()

    def add(self, items: list[Item]) -> None:
        for item in items:
            self._levels[item.priority].append(item)
            self.depths[item.priority] += 1
        self.depth += len(items)
        for level, queued in self._levels.items():
            if len(queued) > 2 * self.max_size + 64:
                self._levels[level] = deque(item for item in queued if item.state == QUEUED)
        self._publish_depth()

    def queued(self) -> Iterator[Item]:
        """Every item still queued, any level."""
        for items in self._levels.values():
            for item in items:
                if item.state == QUEUED:
                    yield item

    def _head(self, level: Priority) -> Item | None:
        items = self._levels[level]
        while items and items[0].state != QUEUED:
            items.popleft()
        return items[0] if items else None

    def oldest(self) -> Item | None:
        heads = [head for level in LEVELS if (head := self._head(level)) is not None]
        return min(heads, key=lambda item: item.enqueued_at) if heads else None

    def _next(self, now: float, lower_levels: bool, aged_ok: bool = True) -> tuple[Item, bool] | None:
        """The item the rule (priorities.py) takes next, popped from its level, and whether it passed a
        higher level as an aged item; None when none may be taken. `lower_levels`: whether items below
        high may be taken other than by such a pass."""
        heads = [head for level in LEVELS if (head := self._head(level)) is not None]
        if not heads:
            return None
        first = heads[0]  # level order
        aged = [head for head in heads if now - head.enqueued_at >= self.aging_s] if aged_ok else []
        oldest_aged = min(aged, key=lambda item: item.enqueued_at) if aged else None
        chosen, passes = self.aged_share.pick(first, oldest_aged)
        if not passes and not (lower_levels or first.priority is Priority.HIGH):
            return None
        self._levels[chosen.priority].popleft()
        self.aged_share.handed_out(passes)
        return chosen, passes

    def take(
        self, limit: int, fill: Callable[[int], int] | None = None, high_only: bool = False
    ) -> list[Item]:
        """Pop up to `limit` live items in priority order; expire or skip the dead ones met on the way.
        `fill(high)`: with high-priority items waiting, how many lower-level items a batch of `high` of
        them may take too, besides aged items' passes (None: as many as fit). `high_only`: high-priority
        items alone, aged or not (a runner kept for them, batcher.py)."""
        batch: list[Item] = []
        now = time.monotonic()
        expired = cancelled = 0
        passes_before = self.aged_share.passes
        fill_left: int | None = 0 if high_only else None
        if fill is not None and not high_only and self.depths[Priority.HIGH] > 0:
            fill_left = fill(min(self.depths[Priority.HIGH], limit))
        while len(batch) < limit:
            next_item = self._next(now, fill_left is None or fill_left > 0, aged_ok=not high_only)
            if next_item is None:
                break
            item, passed = next_item
            self.depths[item.priority] -= 1
            future = item.future
            if future.done():  # caller cancelled; its task has not run its handler yet
                item.state, item.array = DROPPED, RELEASED
                cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                item.state, item.array = EXPIRED, RELEASED
                future.set_exception(DeadlineExceeded("deadline passed while queued"))
                expired += 1
            else:
                item.state = TAKEN
                batch.append(item)
                if fill_left is not None and item.priority is not Priority.HIGH and not passed:
                    fill_left -= 1
        self.depth -= len(batch) + expired + cancelled
        self.items_cancelled += cancelled
        self.count_expired(expired)
        self._publish_depth()
        if self._observer is not None:
            for item in batch:
                self._observer.item_dequeued(self.name, now - item.enqueued_at)
            if passes := self.aged_share.passes - passes_before:
                self._observer.aged_passes(self.name, passes)
        return batch

    def drop(self, items: Iterable[Item]) -> None:
        """The caller gave up (cancelled, or another of its items failed): free its queued slots."""
        dropped = 0
        for item in items:
            if item.state == QUEUED:
                item.state, item.array = DROPPED, RELEASED
                item.future.cancel()
                self.depths[item.priority] -= 1
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
            self.depths[item.priority] -= 1
            if item.future.done():  # caller cancelled; its handler has not run yet
                item.state, item.array = DROPPED, RELEASED
                cancelled += 1
            else:
                item.state, item.array = EXPIRED, RELEASED
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                expired += 1
        self.items_cancelled += cancelled
        if expired or cancelled:
            self.depth -= expired + cancelled
            self.count_expired(expired)
            self._publish_depth()

    def fail_all(self, make_error: Callable[[], Exception]) -> None:
        for queued in self._levels.values():
            for item in queued:
                if item.state == QUEUED:
                    item.state, item.array = FAILED, RELEASED
                    if not item.future.done():
                        item.future.set_exception(make_error())
            queued.clear()
        self.depth = 0
        self.depths = dict.fromkeys(LEVELS, 0)
        self._publish_depth()

    def count_expired(self, count: int) -> None:
        if count:
            self.items_expired += count
            if self._observer is not None:
                self._observer.items_expired(self.name, count)

    def _publish_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.name, self.depth)
            for level, depth in self.depths.items():
                if self._published.get(level) != depth:  # an add or a take changes one or two levels
                    self._observer.priority_depth(self.name, level.label, depth)
                    self._published[level] = depth
