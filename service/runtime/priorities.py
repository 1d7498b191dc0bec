"""Request priorities: a few levels, honoured by each model's batch queue (batch_queue.py).

The rule: the next batch takes items of the highest level first, oldest first within a level, except
that an item which has waited `aging_s` or longer is taken before any item that has not, oldest first,
whatever its level. So a person on the page (high) passes a bulk job (low), and the bulk job still
moves: under a constant stream of high requests a low item waits at most `aging_s` plus the batches
already aged ahead of it. `low` also may not fill the last quarter of a queue, which stays free for
normal and high requests when a bulk job saturates the server (they get 503 only when it is full).
"""

from __future__ import annotations

from enum import IntEnum

from service.errors import InvalidArgument

# Share of a model's queue that low-priority items may fill; the rest is kept for normal and high.
LOW_QUEUE_SHARE = 0.75


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


def queue_limit(max_size: int, priority: Priority) -> int:
    """How many queued items a request of `priority` may find and still be let in (see the module)."""
    if priority is Priority.LOW:
        return max(1, int(max_size * LOW_QUEUE_SHARE))
    return max_size
