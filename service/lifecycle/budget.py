"""Memory: the budget all loaded models share (estimate before a first load, make room by evicting the
least recently used idle model), and the process's own resident memory (measured around each load,
handed back to the OS after an unload).

The budget decides *which* model goes; the manager, which owns model state, is told to evict it
through the callback it passes in."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from service.errors import Overloaded
from service.lifecycle.records import ModelEntry, ModelRecord
from service.model_spec import MODEL_FILE

log = logging.getLogger(__name__)

# Before a model's first load its resident size is estimated from its graph file: the weights plus ORT's
# arenas, sized for the batches that may run at once, grown at warm-up. Measured on CPU with the default
# batches, instances and overlap run size (2026-12-04): lite0 157 MB for a 19 MB graph, b0 216 MB for
# 22 MB, b3 595 MB for 50 MB (300 px); b7 873 MB for 266 MB (2026-12-03). The file alone cannot tell
# these apart: this over-estimates lite0 and b0 (246 and 254 MB) and under-estimates b3 (342 MB), and
# a model that loads on an under-estimate can take the process over its budget until the next load
# evicts. After a load, the measured figure replaces the estimate.
# Those figures are at 3 instances or fewer (2 cores). Each instance beyond adds a batch's arena on the
# one-thread session: measured at 3, 9 and 17 instances (2026-12-04), lite0 4, b0 10 and b3 37 MB per
# instance (10, 26 and 20 MB per GMAC), so 24 MB per GMAC per instance beyond 3.
_ESTIMATE_FACTOR = 3.0
_ESTIMATE_BASE = 192 << 20
_ESTIMATE_INSTANCES = 3
_PER_INSTANCE_PER_GMAC = 24 << 20

Evict = Callable[[ModelRecord], Awaitable[None]]


class MemoryBudget:
    def __init__(self, budget_mb: int) -> None:
        self.budget_bytes = budget_mb << 20

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @staticmethod
    def estimate(record: ModelRecord, entry: ModelEntry, instances: int = _ESTIMATE_INSTANCES) -> int:
        """The measured size of the model's last load, else one from its graph file and, beyond the
        instances the estimate was measured at, its GMACs per instance (`instances`: what it will run)."""
        if record.measured_bytes:
            return record.measured_bytes
        assert entry.path is not None
        try:
            size = (entry.path / MODEL_FILE).stat().st_size
        except OSError:
            size = 0
        gmacs = entry.spec.gmacs if entry.spec is not None else 0.0
        extra = max(0, instances - _ESTIMATE_INSTANCES) * int(gmacs * _PER_INSTANCE_PER_GMAC)
        return int(size * _ESTIMATE_FACTOR) + _ESTIMATE_BASE + extra

    @staticmethod
    def in_use(records: Iterable[ModelRecord]) -> int:
        return sum(e.memory_bytes or 0 for r in records for e in r.loaded())

    async def make_room(
        self, needed: int, exclude: ModelRecord, records: Callable[[], Iterable[ModelRecord]], evict: Evict
    ) -> None:
        """Evict least recently used idle models until `needed` more bytes fit. Raises Overloaded when
        the models holding memory are all in use (or it can never fit)."""
        budget = self.budget_bytes
        if needed > budget:
            raise Overloaded(
                f"model '{exclude.name}' needs about {needed >> 20} MB, more than the whole memory budget "
                f"of {budget >> 20} MB",
                retry_after=60.0,
            )
        while self.in_use(records()) + needed > budget:
            idle = [
                r for r in records()
                if r is not exclude and r.loaded() and not r.busy() and not r.lock.locked()
            ]  # fmt: skip
            if not idle:
                raise Overloaded(
                    f"no room to load model '{exclude.name}' (about {needed >> 20} MB): the memory budget "
                    f"of {budget >> 20} MB is held by models with requests in flight",
                    retry_after=1.0,
                )
            victim = min(idle, key=lambda r: r.last_used)
            log.info("event=evict model=%s to_load=%s", victim.name, exclude.name)
            await evict(victim)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the OS. Without the trim, RSS
    stays at its high-water mark after an ONNX Runtime session is destroyed (Triton issue 4966)."""
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
