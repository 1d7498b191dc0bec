"""The IO-binding buffer sets of a model: each concurrent run takes a set (its own bound batches, one per
bucket, and the CUDA stream they copy on) and gives it back. Sets are made at warm-up; a run that finds
none free makes one more, under load (which then captures no CUDA graph)."""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from service.runtime.buffers import BoundBatch, Items
from service.runtime.device import DeviceContext
from service.runtime.session_buckets import BucketSessions
from service.runtime.session_graphs import GraphIds

log = logging.getLogger(__name__)


class BufferSet:
    """The bound batches of one concurrent run (one per bucket) and the CUDA stream they copy on."""

    def __init__(self, context: DeviceContext | None, warm: bool) -> None:
        self.batches: dict[int, BoundBatch] = {}
        self.context = context
        self.warm = warm  # made at warm-up (may capture CUDA graphs) or under load (may not)


class BufferSets:
    def __init__(
        self, sessions: BucketSessions, output_names: list[str], device: str, device_id: int, graphs: GraphIds
    ) -> None:
        self.sessions = sessions
        self.output_names = output_names
        self.device = device  # "cuda" or "cpu"
        self.device_id = device_id
        self.graphs = graphs
        self.all: list[BufferSet] = []
        self._free: queue.SimpleQueue[BufferSet] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def new_set(self, warm: bool) -> BufferSet:
        buffers = BufferSet(self._new_context(), warm)
        with self._lock:
            self.all.append(buffers)
        return buffers

    def take(self) -> BufferSet:
        try:
            return self._free.get_nowait()
        except queue.Empty:  # more concurrent runs than expected: one more set, made under load
            return self.new_set(warm=False)

    def give_back(self, buffers: BufferSet) -> None:
        self._free.put(buffers)

    def bind(
        self, buffers: BufferSet, size: int, item_shape: tuple[int, ...], graph_id: int | None
    ) -> BoundBatch:
        """Bound buffers for batches of `size` rows in `buffers`, on the session of that size."""
        bound = BoundBatch(
            self.sessions.session_for(size), size, item_shape, self.output_names, self.device,
            self.device_id, graph_id, buffers.context,
        )  # fmt: skip
        buffers.batches[size] = bound
        return bound

    def run(self, items: Items, size: int) -> dict[str, np.ndarray]:
        """`items` padded into the bound batch of `size` rows of a free set, run, len(items) rows back."""
        buffers = self.take()
        try:
            bound = buffers.batches.get(size)
            if bound is None:  # a size warm-up did not see (buckets off, or above the largest): no graph
                bound = self.bind(buffers, size, _row_shape(items), self.graphs.under_load())
            bound.load(items)
            with self.graphs.replaying():
                return bound.run(len(items))
        finally:
            self.give_back(buffers)

    def _new_context(self) -> DeviceContext | None:
        """A stream of its own for one buffer set's copies (CUDA with CuPy), else None."""
        if self.device != "cuda":
            return None
        try:
            return DeviceContext(self.device_id)
        except Exception as exc:  # no CuPy: host rows still work (whole-bucket copies), device rows do not
            log.warning("event=no_device_context reason=%r", str(exc))
            return None


def _row_shape(items: Items) -> tuple[int, ...]:
    first = items[0]
    if hasattr(first, "__cuda_array_interface__"):
        return tuple(first.__cuda_array_interface__["shape"])
    return tuple(np.shape(first))
