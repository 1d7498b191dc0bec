"""A model's ONNX Runtime runner: runs a batch on the session that fits it. Its parts, a module each:
session_options (options, providers, fast path), session_create (sessions and the provider they got),
session_buckets (a session per batch bucket), session_buffers (IO-binding buffer sets), session_graphs
(CUDA graph ids), overlap (the CPU's one-thread session) and session_warmup."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.runtime.buffers import Items, bucket_for, is_device_array
from service.runtime.overlap import OverlapSession
from service.runtime.providers import CPU, CUDA, nvidia_gpu_present
from service.runtime.session_buckets import BucketSessions
from service.runtime.session_buffers import BufferSet, BufferSets
from service.runtime.session_create import create_session
from service.runtime.session_graphs import GraphIds
from service.runtime.session_options import (
    RuntimeOptions,
    RuntimeUnavailable,
    build_session_options,
    cuda_provider_options,
    fast_path,
    intra_op_threads,
    provider_list,
    register_shared_arena,
    switch,
)
from service.runtime.session_warmup import warm_up_bound, warm_up_plain, warmup_batch_sizes

__all__ = [
    "CPU",
    "CUDA",
    "BufferSet",
    "GraphIds",
    "OrtRunner",
    "RuntimeOptions",
    "RuntimeUnavailable",
    "cuda_provider_options",
    "fast_path",
    "intra_op_threads",
    "nvidia_gpu_present",
    "provider_list",
    "register_shared_arena",
    "build_session_options",
    "warmup_batch_sizes",
]

log = logging.getLogger(__name__)


class OrtRunner:
    """A loaded ONNX Runtime session for one model. `run` is blocking and thread-safe."""

    def __init__(self, model_path: Path, options: RuntimeOptions, output_names: list[str]) -> None:
        session, self.provider = create_session(model_path, options)
        self._model_path = model_path
        self.intra_op_threads = intra_op_threads(options, self.provider == CUDA)
        self.input_name = session.get_inputs()[0].name
        self.output_names = output_names
        self._run_options = ort.RunOptions()
        self.options = options
        self.use_buckets, self.use_io_binding, graphs = fast_path(options, self.provider)
        if graphs and options.batch_buckets == "off":
            log.warning("event=cuda_graphs_force_buckets model_path=%s", model_path)
        self.buckets: list[int] = []  # set by warm_up when buckets are on
        self.use_bucket_sessions = self.use_buckets and switch(options.bucket_sessions, self.provider)
        self.sessions = BucketSessions(session, model_path, options, self.provider)
        self.graphs = GraphIds(graphs)
        device = "cuda" if self.provider == CUDA else "cpu"
        self.buffer_sets = BufferSets(
            self.sessions, output_names, device, options.cuda_device_id, self.graphs
        )
        # CPU: the one-thread session for batches that start while another runs (add_overlap_session).
        self._single: OverlapSession | None = None
        self._running = 0
        self._running_lock = threading.Lock()
        log.info(
            "event=session_created model_path=%s provider=%s buckets=%s bucket_sessions=%s io_binding=%s "
            "cuda_graphs=%s intra_op_threads=%s shared_arena=%s provider_options=%s",
            model_path, self.provider, self.use_buckets, self.use_bucket_sessions, self.use_io_binding,
            graphs, self.intra_op_threads, self.provider == CUDA and options.cuda_shared_arena,
            session.get_provider_options().get(self.provider, {}),
        )  # fmt: skip

    @property
    def session(self) -> ort.InferenceSession:
        """The main session (batches of sizes no bucket session holds, and everything without them)."""
        return self.sessions.main

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_items(batch)

    @contextlib.contextmanager
    def busy(self) -> Iterator[bool]:
        """Held while a batch runs, or while its own thread decodes its images (batcher, Encoded items):
        that core is busy, so a batch that starts running meanwhile is not alone and takes a one-thread
        session. Yields whether nothing else was busy."""
        with self._running_lock:
            alone = self._running == 0
            self._running += 1
        try:
            yield alone
        finally:
            with self._running_lock:
                self._running -= 1

    def add_overlap_session(self) -> bool:
        """On the CPU provider: a one-thread session of the same graph, for batches that start while
        another batch runs or decodes (overlap.py). Returns whether it was added (not on CUDA, with IO
        binding, or when the main session has one thread anyway)."""
        if self.provider != CPU or self.use_io_binding or self.options.intra_op_threads <= 1:
            return False
        options = build_session_options(replace(self.options, intra_op_threads=1))
        session = ort.InferenceSession(str(self._model_path), sess_options=options, providers=[CPU])
        self._single = OverlapSession(
            session, self.output_names, self._run_options, self.options.overlap_run_size or None
        )
        return True

    @property
    def overlap_run_size(self) -> int | None:
        """Images per run of an overlapping batch; None without a one-thread session, or whole batches."""
        return None if self._single is None else self._single.run_size

    def run_items(
        self, items: Items, extra: Sequence[str] = (), feeds: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a batch given as its rows (host arrays or CUDA device arrays) or as one stacked array.

        Buckets on: padded up to the next warmed size, outputs sliced back to len(items) rows.
        `extra`: outputs beyond the usual ones (features, maps), with the inputs they take in `feeds`;
        such a run goes through the plain session call (its own shapes; no bound buffers).
        """
        if extra:
            return self._run_extra(items, extra, feeds or {})
        n = len(items)
        size = bucket_for(n, self.buckets) if self.use_buckets else n
        if self.use_io_binding or (not isinstance(items, np.ndarray) and any(map(is_device_array, items))):
            return self.buffer_sets.run(items, size)
        batch = items if isinstance(items, np.ndarray) else np.stack(items)
        if size != n:
            batch = _padded(batch, size, 0)
        with self.busy() as alone:
            if alone or self._single is None:
                session = self.session_for(size)
                outputs = session.run(self.output_names, {self.input_name: batch}, self._run_options)
            else:
                outputs = self._single.run(batch)
        return {name: value[:n] for name, value in zip(self.output_names, outputs, strict=True)}

    @property
    def serves_extra_outputs(self) -> bool:
        """Whether runs may ask for features and maps: not while CUDA graphs replay fixed outputs."""
        return not self.graphs.enabled

    def _run_extra(
        self, items: Items, extra: Sequence[str], feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        if self.graphs.enabled:
            raise RuntimeError("features and activation maps are not served with CUDA graphs on")
        if isinstance(items, np.ndarray):
            batch = items
        else:  # device rows (CuPy) come back to the host: this run is not on the bound fast path
            batch = np.stack([row.get() if is_device_array(row) else row for row in items])
        n = len(batch)
        size = bucket_for(n, self.buckets) if self.use_bucket_sessions else n
        if size != n:  # a bucket's session runs only its own batch size: pad (rows are independent)
            batch = _padded(batch, size, 0)
            feeds = {name: _padded(value, size, -1) for name, value in feeds.items()}  # -1: no map
        names = [*self.output_names, *extra]
        session = self.session_for(size)
        outputs = session.run(names, {self.input_name: batch, **feeds}, self._run_options)
        return {name: value[:n] for name, value in zip(names, outputs, strict=True)}

    def session_for(self, size: int) -> ort.InferenceSession:
        """The session that runs batches of `size` rows (bucket sessions: its own; else the main one)."""
        return self.sessions.session_for(size)

    def warm_up(
        self, input_shape: tuple[int, int, int], batch_sizes: list[int], runs: int, concurrent: int = 1
    ) -> float:
        """Run each batch size `runs` times (first runs allocate memory and pick kernels).

        With buckets on, `batch_sizes` become the buckets; with IO binding, each concurrent buffer set
        is bound and run at every size here, so no request meets a first-time shape or address.
        `concurrent`: the batches that may run at once (the batcher's instances). The one-thread session
        runs that many of its pieces at once, so its memory arena reaches under load no more than here
        (overlap.py). Returns the seconds it took."""
        start = time.monotonic()
        if self.use_buckets:
            self.buckets = sorted(set(batch_sizes))
            if self.use_bucket_sessions:
                self.sessions.add(self.buckets[1:])
        if self.use_io_binding:
            warm_up_bound(self.buffer_sets, input_shape, batch_sizes, runs, self.options.buffer_sets)
        else:
            warm_up_plain(self.run, self._single, input_shape, batch_sizes, runs, concurrent)
        return time.monotonic() - start


def _padded(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    """`array` with rows of `fill` added up to `size` rows."""
    padded = np.full((size, *array.shape[1:]), fill, dtype=array.dtype)
    padded[: len(array)] = array
    return padded
