"""Process memory: resident set size, and handing freed heap back to the OS after a model unload."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os


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
