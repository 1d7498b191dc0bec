"""One ONNX Runtime session: provider choice, session options, warm-up, run(batch)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.runtime.buffers import BoundBatch, Items, bucket_for, is_device_array
from service.runtime.device import DeviceContext
from service.runtime.overlap import OverlapSession
from service.runtime.providers import CPU, CUDA, nvidia_gpu_present
from service.settings import Settings

log = logging.getLogger(__name__)


_GRAPH_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class RuntimeUnavailable(RuntimeError):
    """The requested execution provider cannot be used (e.g. --device cuda without CUDA)."""


@dataclass(frozen=True)
class RuntimeOptions:
    device: str
    intra_op_threads: int
    inter_op_threads: int
    allow_spinning: bool
    graph_optimization: str
    cuda_device_id: int
    cudnn_conv_algo_search: str
    spin_between_runs: bool = False
    # The CUDA fast path (auto: on for CUDA, off on CPU, whose path stays exactly as it was).
    batch_buckets: str = "auto"
    bucket_sessions: str = "auto"
    io_binding: str = "auto"
    gpu_mem_limit_mb: int = 0
    arena_extend_strategy: str = "kSameAsRequested"
    cuda_graphs: bool = False
    cuda_tf32: bool = True  # ORT's own default; set explicitly either way
    cuda_intra_op_threads: int = 1  # a CUDA session's; 0: intra_op_threads
    cuda_shared_arena: bool = False
    buffer_sets: int = 1  # concurrent runs with IO binding (one buffer set each): the batcher's instances
    overlap_run_size: int = 1  # images per run on the one-thread session; 0: the whole batch

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        return cls(
            device=settings.device,
            intra_op_threads=settings.effective_intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            allow_spinning=settings.effective_allow_spinning,
            spin_between_runs=settings.spin_between_runs,
            graph_optimization=settings.graph_optimization,
            cuda_device_id=settings.cuda_device_id,
            cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
            batch_buckets=settings.batch_buckets,
            bucket_sessions=settings.bucket_sessions,
            io_binding=settings.io_binding,
            gpu_mem_limit_mb=settings.gpu_mem_limit_mb,
            arena_extend_strategy=settings.arena_extend_strategy,
            cuda_graphs=settings.cuda_graphs,
            cuda_tf32=settings.cuda_tf32,
            cuda_intra_op_threads=settings.cuda_intra_op_threads,
            cuda_shared_arena=settings.cuda_shared_arena,
            buffer_sets=settings.instances or 2,
            overlap_run_size=settings.overlap_run_size,
        )


def intra_op_threads(options: RuntimeOptions, cuda: bool) -> int:
    """A session's intra-op threads: on CUDA `cuda_intra_op_threads` (0: as on the CPU)."""
    return (options.cuda_intra_op_threads or options.intra_op_threads) if cuda else options.intra_op_threads


def _session_options(options: RuntimeOptions, cuda: bool = False) -> ort.SessionOptions:
    """The options of a session that asks for CUDA (`cuda`) or runs on the CPU."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads(options, cuda)
    if cuda and options.cuda_shared_arena:  # the arena registered with the env (register_shared_arena)
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _GRAPH_OPT[options.graph_optimization]
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if options.allow_spinning and not options.spin_between_runs:
        # Spin while a batch runs (its parallel pieces follow each other closely), stop when the last
        # running batch returns: the cores are then free for decoding the next request's image.
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3  # errors only; provider fall-back is reported by us, once, clearly
    return so


def _providers(options: RuntimeOptions) -> list[str | tuple[str, dict[str, object]]]:
    cpu: list[str | tuple[str, dict[str, object]]] = [CPU]
    if options.device == "cpu" or CUDA not in ort.get_available_providers():
        return cpu
    if options.device == "auto" and not nvidia_gpu_present():
        return cpu
    return [(CUDA, cuda_provider_options(options)), *cpu]


def cuda_provider_options(options: RuntimeOptions) -> dict[str, object]:
    cuda_options: dict[str, object] = {
        "device_id": options.cuda_device_id,
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        "arena_extend_strategy": options.arena_extend_strategy,
        "use_tf32": "1" if options.cuda_tf32 else "0",
    }
    if options.gpu_mem_limit_mb:
        cuda_options["gpu_mem_limit"] = options.gpu_mem_limit_mb * 1024 * 1024
    if options.cuda_graphs:
        cuda_options["enable_cuda_graph"] = "1"
    return cuda_options


def register_shared_arena(options: RuntimeOptions) -> bool:
    """Register one CUDA arena for `cuda_device_id` with ORT's environment, which every session made with
    `session.use_env_allocators` then allocates from. Once per process and device: ORT refuses a second
    registration, which is then the arena already there. Returns whether this call registered it."""
    memory = ort.OrtMemoryInfo(
        "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, options.cuda_device_id, ort.OrtMemType.DEFAULT
    )
    arena = ort.OrtArenaCfg(
        {
            "max_mem": options.gpu_mem_limit_mb * 1024 * 1024,  # 0: no limit
            "arena_extend_strategy": 0 if options.arena_extend_strategy == "kNextPowerOfTwo" else 1,
        }
    )
    provider_options = {"device_id": str(options.cuda_device_id)}
    try:
        ort.create_and_register_allocator_v2(CUDA, memory, provider_options, arena)
    except Exception as exc:
        if "already" not in str(exc).lower():
            raise
        return False
    log.info("event=shared_cuda_arena device_id=%s", options.cuda_device_id)
    return True


def _switch(value: str, provider: str) -> bool:
    return value == "on" or (value == "auto" and provider == CUDA)


def fast_path(options: RuntimeOptions, provider: str) -> tuple[bool, bool, bool]:
    """(buckets, io_binding, cuda_graphs) for a session that got `provider`. CUDA graphs replay fixed
    shapes at fixed addresses, so they force buckets and IO binding on, whatever those say."""
    graphs = options.cuda_graphs and provider == CUDA
    return (
        _switch(options.batch_buckets, provider) or graphs,
        _switch(options.io_binding, provider) or graphs,
        graphs,
    )


class GraphIds:
    """CUDA graph ids (ORT `gpu_graph_id`): one per (buffer set, bucket) bound at warm-up, where capture
    happens with nothing else running; buffers bound later, under load, run with -1 (no graph): a
    capture there would record while other batches run. None everywhere when graphs are off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._next = 0
        self._lock = threading.Lock()

    def for_warm_up(self) -> int | None:
        if not self.enabled:
            return None
        with self._lock:
            self._next += 1
            return self._next - 1

    def under_load(self) -> int | None:
        return -1 if self.enabled else None


class BufferSet:
    """The bound batches of one concurrent run (one per bucket) and the CUDA stream they copy on."""

    def __init__(self, context: DeviceContext | None, warm: bool) -> None:
        self.batches: dict[int, BoundBatch] = {}
        self.context = context
        self.warm = warm  # made at warm-up (may capture CUDA graphs) or under load (may not)


class OrtRunner:
    """A loaded ONNX Runtime session for one model. `run` is blocking and thread-safe."""

    def __init__(self, model_path: Path, options: RuntimeOptions, output_names: list[str]) -> None:
        if options.device == "cuda" and CUDA not in ort.get_available_providers():
            raise RuntimeUnavailable(
                f"--device cuda, but this onnxruntime ({ort.__version__}) has no CUDA provider"
            )
        if options.device == "cuda" and not nvidia_gpu_present():
            raise RuntimeUnavailable("--device cuda, but no NVIDIA GPU is visible (/dev/nvidia*)")
        providers = _providers(options)
        if providers[0] != CPU and hasattr(ort, "preload_dlls"):
            # CUDA/cuDNN from pip's nvidia-* wheels are not on the loader path; this finds them. Where
            # they are system libraries (the CUDA base image) it finds nothing, which is fine.
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        asks_cuda = providers[0] != CPU
        if asks_cuda and options.cuda_shared_arena:
            register_shared_arena(options)
        self.session = ort.InferenceSession(
            str(model_path), sess_options=_session_options(options, asks_cuda), providers=providers
        )
        self._model_path = model_path
        # The provider list says what the session really got: onnxruntime-gpu silently falls back to
        # CPU when CUDA or cuDNN libraries are missing.
        self.provider = self.session.get_providers()[0]
        if asks_cuda and self.provider != CUDA:
            log.warning("event=cuda_fallback model_path=%s reason='session fell back to CPU'", model_path)
            if options.device != "cuda" and intra_op_threads(options, True) != options.intra_op_threads:
                # made with CUDA's thread count: the CPU that runs it now gets its own
                self.session = ort.InferenceSession(
                    str(model_path), sess_options=_session_options(options), providers=[CPU]
                )
        if options.device == "cuda" and self.provider != CUDA:
            raise RuntimeUnavailable(
                "--device cuda, but the session fell back to CPU (CUDA 13 / cuDNN 9 libraries missing?)"
            )
        self.intra_op_threads = intra_op_threads(options, self.provider == CUDA)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = output_names
        self._run_options = ort.RunOptions()
        self.options = options
        self.use_buckets, self.use_io_binding, graphs = fast_path(options, self.provider)
        if graphs and options.batch_buckets == "off":
            log.warning("event=cuda_graphs_force_buckets model_path=%s", model_path)
        self.buckets: list[int] = []  # set by warm_up when buckets are on
        # One session per bucket but the smallest (which the main session serves, with the sizes no bucket
        # holds): each session's kernels only ever see one batch size, runs with extra outputs padded too.
        self.use_bucket_sessions = self.use_buckets and _switch(options.bucket_sessions, self.provider)
        self._bucket_sessions: dict[int, ort.InferenceSession] = {}
        self._device = "cuda" if self.provider == CUDA else "cpu"
        # Buffer sets: each concurrent run takes one (its own bound buffers), and gives it back.
        self._sets: queue.SimpleQueue[BufferSet] = queue.SimpleQueue()
        self._all_sets: list[BufferSet] = []
        self._graph_ids = GraphIds(graphs)
        self._sets_lock = threading.Lock()
        # CUDA graph replay of one session is not safe from two threads at once.
        self._graph_lock = threading.Lock() if graphs else None
        # CPU: the one-thread session for batches that start while another runs (add_overlap_session).
        self._single: OverlapSession | None = None
        self._running = 0
        self._running_lock = threading.Lock()
        log.info(
            "event=session_created model_path=%s provider=%s buckets=%s bucket_sessions=%s io_binding=%s "
            "cuda_graphs=%s intra_op_threads=%s shared_arena=%s provider_options=%s",
            model_path, self.provider, self.use_buckets, self.use_bucket_sessions, self.use_io_binding,
            self._graph_lock is not None, self.intra_op_threads,
            self.provider == CUDA and options.cuda_shared_arena,
            self.session.get_provider_options().get(self.provider, {}),
        )  # fmt: skip

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
        options = _session_options(replace(self.options, intra_op_threads=1))
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
            return self._run_bound(items, size)
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
        return self._graph_lock is None

    def _run_extra(
        self, items: Items, extra: Sequence[str], feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        if self._graph_lock is not None:
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

    def _run_bound(self, items: Items, size: int) -> dict[str, np.ndarray]:
        buffers = self._take_set()
        try:
            bound = buffers.batches.get(size)
            if bound is None:  # a size warm-up did not see (buckets off, or above the largest): no graph
                bound = self._bind(buffers, size, _row_shape(items), self._graph_ids.under_load())
                buffers.batches[size] = bound
            bound.load(items)
            if self._graph_lock is None:
                return bound.run(len(items))
            with self._graph_lock:
                return bound.run(len(items))
        finally:
            self._sets.put(buffers)

    def session_for(self, size: int) -> ort.InferenceSession:
        """The session that runs batches of `size` rows (bucket sessions: its own; else the main one)."""
        return self._bucket_sessions.get(size, self.session)

    def _add_bucket_sessions(self, sizes: Sequence[int]) -> None:
        """A session of the same graph and options for each of `sizes` (made before any of them runs)."""
        for size in sizes:
            if size in self._bucket_sessions:
                continue
            session = ort.InferenceSession(
                str(self._model_path),
                sess_options=_session_options(self.options, self.provider == CUDA),
                providers=_providers(self.options),
            )
            if session.get_providers()[0] != self.provider:
                raise RuntimeUnavailable(
                    f"the session for batches of {size} got {session.get_providers()[0]}, not {self.provider}"
                )
            self._bucket_sessions[size] = session
        log.info(
            "event=bucket_sessions model_path=%s sizes=%s", self._model_path, sorted(self._bucket_sessions)
        )

    def _take_set(self) -> BufferSet:
        try:
            return self._sets.get_nowait()
        except queue.Empty:
            with self._sets_lock:  # more concurrent runs than expected: one more set, made under load
                buffers = BufferSet(self._new_context(), warm=False)
                self._all_sets.append(buffers)
                return buffers

    def _new_context(self) -> DeviceContext | None:
        """A stream of its own for one buffer set's copies (CUDA with CuPy), else None."""
        if self._device != "cuda":
            return None
        try:
            return DeviceContext(self.options.cuda_device_id)
        except Exception as exc:  # no CuPy: host rows still work (whole-bucket copies), device rows do not
            log.warning("event=no_device_context reason=%r", str(exc))
            return None

    def _bind(
        self, buffers: BufferSet, size: int, item_shape: tuple[int, ...], graph_id: int | None
    ) -> BoundBatch:
        return BoundBatch(
            self.session_for(size), size, item_shape, self.output_names, self._device,
            self.options.cuda_device_id, graph_id, buffers.context,
        )  # fmt: skip

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
        rng = np.random.default_rng(0)
        if self.use_buckets:
            self.buckets = sorted(set(batch_sizes))
            if self.use_bucket_sessions:
                self._add_bucket_sessions(self.buckets[1:])
        if not self.use_io_binding:
            batches = [
                rng.integers(0, 256, size=(size, *input_shape), dtype=np.uint8) for size in batch_sizes
            ]
            for batch in batches:
                for _ in range(runs):
                    self.run(batch)
            if self._single is not None:  # first runs allocate memory and pick kernels there too
                self._single.warm_up(batches, runs, concurrent)
            return time.monotonic() - start
        # CUDA graphs are captured after a few ordinary runs of each graph id: do them all here.
        runs = max(runs, 3) if self._graph_lock is not None else max(1, runs)
        for _ in range(max(1, self.options.buffer_sets)):
            buffers = BufferSet(self._new_context(), warm=True)
            self._all_sets.append(buffers)
            for size in batch_sizes:
                bound = self._bind(buffers, size, input_shape, self._graph_ids.for_warm_up())
                buffers.batches[size] = bound
                bound.load(rng.integers(0, 256, size=(size, *input_shape), dtype=np.uint8))
                for _ in range(runs):
                    bound.run(size)
            self._sets.put(buffers)
        return time.monotonic() - start


def _padded(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    """`array` with rows of `fill` added up to `size` rows."""
    padded = np.full((size, *array.shape[1:]), fill, dtype=array.dtype)
    padded[: len(array)] = array
    return padded


def _row_shape(items: Items) -> tuple[int, ...]:
    first = items[0]
    if hasattr(first, "__cuda_array_interface__"):
        return tuple(first.__cuda_array_interface__["shape"])
    return tuple(np.shape(first))


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size: the shapes the batcher will produce most."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes
