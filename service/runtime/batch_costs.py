"""What a batch of each size costs one model, measured, and how many lower-priority images a batch that
holds high-priority ones may carry (priorities.py's rule for such batches).

A high-priority image should not pay for a bulk job's batch: on a CPU a batch of four costs about three
of one, so the person's one photo would wait for three others. On a GPU a batch of sixteen costs about
one, and the bulk job may ride along for free. So the fill is measured, not guessed: a batch holding `h`
high images takes `k` more only while the measured cost of `h + k` stays within `slack` times that of
`h`. A size not measured yet gets `unmeasured_fill` (a setting) instead.
"""

from __future__ import annotations

_EWMA_ALPHA = 0.2


class BatchCosts:
    """Moving averages of a batch's seconds in its worker thread (preparing and running), per size."""

    def __init__(self, max_batch_size: int, slack: float, unmeasured_fill: int) -> None:
        if slack < 1:
            raise ValueError("slack must be at least 1")
        if unmeasured_fill < 0:
            raise ValueError("unmeasured_fill must not be negative")
        self._max = max_batch_size
        self._slack = slack
        self._unmeasured = unmeasured_fill
        self._seconds: dict[int, float] = {}

    def observe(self, size: int, seconds: float) -> None:
        old = self._seconds.get(size)
        self._seconds[size] = seconds if old is None else old + _EWMA_ALPHA * (seconds - old)

    def seconds(self, size: int) -> float | None:
        return self._seconds.get(size)

    def fill(self, high: int) -> int:
        """Lower-priority images a batch of `high` high-priority images may take besides them."""
        room = max(0, self._max - high)
        base = self._seconds.get(max(high, 1))
        if base is None:
            return min(self._unmeasured, room)
        fill = 0
        for extra in range(1, room + 1):
            cost = self._seconds.get(high + extra)
            if cost is None:
                # Unmeasured beyond this size: as far as the setting allows, never past a measured limit.
                return max(fill, min(self._unmeasured, room))
            if cost > self._slack * base:
                break
            fill = extra
        return fill
