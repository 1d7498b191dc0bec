"""CUDA graphs per batch bucket (ORT's enable_cuda_graph): which graph id a bound batch gets, and the lock
that keeps two threads from replaying graphs of one model at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class GraphIds:
    """CUDA graph ids (ORT `gpu_graph_id`): one per (buffer set, bucket) bound at warm-up, where capture
    happens with nothing else running; buffers bound later, under load, run with -1 (no graph): a
    capture there would record while other batches run. None everywhere when graphs are off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._next = 0
        self._lock = threading.Lock()
        self._replay = threading.Lock()  # CUDA graph replay of one session is not safe from two threads

    def for_warm_up(self) -> int | None:
        if not self.enabled:
            return None
        with self._lock:
            self._next += 1
            return self._next - 1

    def under_load(self) -> int | None:
        return -1 if self.enabled else None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Held around a bound run: one at a time with graphs on, no lock without."""
        if not self.enabled:
            yield
            return
        with self._replay:
            yield
