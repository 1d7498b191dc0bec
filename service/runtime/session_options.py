"""A session's options: RuntimeOptions (from Settings), the session options, the providers and their
options, the shared CUDA arena, and which parts of the CUDA fast path a provider gets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnxruntime as ort

from service.runtime.int8_kernels import faithful_int8
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


def build_session_options(options: RuntimeOptions, cuda: bool = False) -> ort.SessionOptions:
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
    return so if cuda else faithful_int8(so)


def provider_list(options: RuntimeOptions) -> list[str | tuple[str, dict[str, object]]]:
    """The providers a session asks for, best first (CUDA only where it may be there)."""
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


def switch(value: str, provider: str) -> bool:
    return value == "on" or (value == "auto" and provider == CUDA)


def fast_path(options: RuntimeOptions, provider: str) -> tuple[bool, bool, bool]:
    """(buckets, io_binding, cuda_graphs) for a session that got `provider`. CUDA graphs replay fixed
    shapes at fixed addresses, so they force buckets and IO binding on, whatever those say."""
    graphs = options.cuda_graphs and provider == CUDA
    return (
        switch(options.batch_buckets, provider) or graphs,
        switch(options.io_binding, provider) or graphs,
        graphs,
    )
