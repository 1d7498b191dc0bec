"""One ONNX Runtime session: provider choice, session options, warm-up, run(batch)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

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

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        return cls(
            device=settings.device,
            intra_op_threads=settings.effective_intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            allow_spinning=settings.allow_spinning,
            graph_optimization=settings.graph_optimization,
            cuda_device_id=settings.cuda_device_id,
            cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
        )


def _session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _GRAPH_OPT[options.graph_optimization]
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3  # errors only; provider fall-back is reported by us, once, clearly
    return so


def nvidia_gpu_present() -> bool:
    """Whether the kernel exposes an NVIDIA GPU. Asking onnxruntime-gpu for CUDA without one makes it
    log alarming errors before it falls back to CPU, so `auto` does not ask then."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _providers(options: RuntimeOptions) -> list[str | tuple[str, dict[str, object]]]:
    cpu: list[str | tuple[str, dict[str, object]]] = [CPU]
    if options.device == "cpu" or CUDA not in ort.get_available_providers():
        return cpu
    if options.device == "auto" and not nvidia_gpu_present():
        return cpu
    cuda_options: dict[str, object] = {
        "device_id": options.cuda_device_id,
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        "arena_extend_strategy": "kSameAsRequested",
    }
    return [(CUDA, cuda_options), *cpu]


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
        self.session = ort.InferenceSession(
            str(model_path), sess_options=_session_options(options), providers=providers
        )
        # The provider list says what the session really got: onnxruntime-gpu silently falls back to
        # CPU when CUDA or cuDNN libraries are missing.
        self.provider = self.session.get_providers()[0]
        if providers[0] != CPU and self.provider != CUDA:
            log.warning("event=cuda_fallback model_path=%s reason='session fell back to CPU'", model_path)
        if options.device == "cuda" and self.provider != CUDA:
            raise RuntimeUnavailable(
                "--device cuda, but the session fell back to CPU (CUDA 13 / cuDNN 9 libraries missing?)"
            )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = output_names
        self._run_options = ort.RunOptions()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {self.input_name: batch}, self._run_options)
        return dict(zip(self.output_names, outputs, strict=True))

    def warm_up(self, input_shape: tuple[int, int, int], batch_sizes: list[int], runs: int) -> float:
        """Run each batch size `runs` times (first runs allocate memory and pick kernels).
        Returns the seconds it took."""
        start = time.monotonic()
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            batch = rng.integers(0, 256, size=(size, *input_shape), dtype=np.uint8)
            for _ in range(runs):
                self.run(batch)
        return time.monotonic() - start


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size: the shapes the batcher will produce most."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes
