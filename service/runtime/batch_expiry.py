"""One timer per batch queue for the deadlines of items queued without a timer each (Batcher.enqueue):
it wakes at the soonest deadline among the queued items, answers those whose deadline passed, and
wakes again at the next. It holds no items, so a finished call's rows are not kept until its deadline."""

from __future__ import annotations

import asyncio
import time

from service.runtime.batch_queue import BatchQueue, Item


class QueueExpiry:
    def __init__(self, queue: BatchQueue) -> None:
        self._queue = queue
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, deadline: float) -> None:
        """Wake at `deadline` (time.monotonic()) unless already waking earlier. In the event loop only."""
        if self._timer is not None:
            if self._at <= deadline:
                return
            self._timer.cancel()
        self._at = deadline
        delay = max(0.0, deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire_due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        self._timer = None
        now = time.monotonic()
        due: list[Item] = []
        soonest: float | None = None
        for item in self._queue.queued():
            deadline = item.deadline
            if deadline is None:
                continue
            if deadline <= now:
                due.append(item)
            elif soonest is None or deadline < soonest:
                soonest = deadline
        if due:
            self._queue.expire(due)
        if soonest is not None:
            self.arm(soonest)
