"""Request priorities: a few levels, honoured by each model's batch queue (batch_queue.py).

The rule: the next batch takes items of the highest level first, oldest first within a level, except
that an item which has waited `aging_s` or longer may go ahead of higher levels, oldest first, in at
most `AGED_SHARE` of the items the queue hands out. So a person on the page (high) passes a bulk job
(low), and the bulk job still moves: under a constant stream of high requests its aged items get a
quarter of the images batches take. The share is what keeps priorities under sustained saturation, when every
queued item has aged: aged items taking precedence without bound would make the queue first come,
first served, and put a high request behind the whole backlog. `low` also may not fill the last
quarter of a queue, which stays free for normal and high requests when a bulk job saturates the server
(they get 503 only when it is full).
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

from service.errors import InvalidArgument

T = TypeVar("T")

# Share of a model's queue that low-priority items may fill; the rest is kept for normal and high.
LOW_QUEUE_SHARE = 0.75
# Share of the items a queue hands out that aged items may take ahead of higher levels. Passes are not
# saved up while none is wanted: a burst of them would land in the batch of the next high item.
AGED_SHARE = 0.25


class Priority(IntEnum):
    """Smaller is served first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()


LEVELS = tuple(Priority)
DEFAULT = Priority.NORMAL
NAMES = ", ".join(p.label for p in LEVELS)


def parse_priority(value: object) -> Priority:
    """A request's priority: a level's name (any case); empty or None is the default. For Open Inference
    Protocol clients (tritonclient's `priority`, an unsigned integer where 0 means the default and 1 is
    the highest), integers too: 0 normal, 1 high, 2 normal, 3 and above low."""
    if value is None or value == "":
        return DEFAULT
    if isinstance(value, bool):
        raise InvalidArgument(f"priority must be one of {NAMES}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"priority must be one of {NAMES} (or an integer >= 0)")
        return {0: DEFAULT, 1: Priority.HIGH, 2: Priority.NORMAL}.get(value, Priority.LOW)
    if isinstance(value, str):
        try:
            return Priority[value.strip().upper()]
        except KeyError:
            pass
    raise InvalidArgument(f"priority must be one of {NAMES}, got {str(value)[:32]!r}")


class AgedShare:
    """Keeps aged items' passes over higher levels within AGED_SHARE of the items handed out (the batch
    queue's, and the preprocessing pool's threads)."""

    __slots__ = ("_credit", "passes")

    def __init__(self) -> None:
        self._credit = 1.0
        self.passes = 0  # aged items handed out ahead of a higher level

    def pick(self, first: T, oldest_aged: T | None) -> tuple[T, bool]:
        """The next item: `oldest_aged` where it may pass `first` (the level order's choice) now, else
        `first`; and whether it passed. The caller reports it with `handed_out` once handed out."""
        if oldest_aged is not None and oldest_aged is not first and self._credit >= 1.0:
            return oldest_aged, True
        return first, False

    def handed_out(self, passed: bool) -> None:
        if passed:
            self._credit -= 1.0
            self.passes += 1
        self._credit = min(1.0, self._credit + AGED_SHARE)


def queue_limit(max_size: int, priority: Priority) -> int:
    """How many queued items a request of `priority` may find and still be let in (see the module)."""
    if priority is Priority.LOW:
        return max(1, int(max_size * LOW_QUEUE_SHARE))
    return max_size
