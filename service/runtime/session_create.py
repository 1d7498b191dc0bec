"""Creating a model's ONNX Runtime sessions, and checking which provider each really got: onnxruntime-gpu
silently falls back to the CPU when the CUDA or cuDNN libraries are missing."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnxruntime as ort

from service.runtime.providers import CPU, CUDA, nvidia_gpu_present
from service.runtime.session_options import (
    RuntimeOptions,
    RuntimeUnavailable,
    build_session_options,
    intra_op_threads,
    provider_list,
    register_shared_arena,
)

log = logging.getLogger(__name__)


def create_session(model_path: Path, options: RuntimeOptions) -> tuple[ort.InferenceSession, str]:
    """The model's main session and the provider it really got. `--device cuda` that cannot have CUDA
    raises RuntimeUnavailable; `auto` falls back to the CPU, with the CPU's thread count."""
    if options.device == "cuda" and CUDA not in ort.get_available_providers():
        raise RuntimeUnavailable(
            f"--device cuda, but this onnxruntime ({ort.__version__}) has no CUDA provider"
        )
    if options.device == "cuda" and not nvidia_gpu_present():
        raise RuntimeUnavailable("--device cuda, but no NVIDIA GPU is visible (/dev/nvidia*)")
    asked = provider_list(options)
    asks_cuda = asked[0] != CPU
    if asks_cuda and hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from pip's nvidia-* wheels are not on the loader path; this finds them. Where
        # they are system libraries (the CUDA base image) it finds nothing, which is fine.
        with contextlib.suppress(Exception):
            ort.preload_dlls()
    if asks_cuda and options.cuda_shared_arena:
        register_shared_arena(options)
    session = ort.InferenceSession(
        str(model_path), sess_options=build_session_options(options, asks_cuda), providers=asked
    )
    provider = session.get_providers()[0]
    if asks_cuda and provider != CUDA:
        log.warning("event=cuda_fallback model_path=%s reason='session fell back to CPU'", model_path)
        if options.device == "cuda":
            raise RuntimeUnavailable(
                "--device cuda, but the session fell back to CPU (CUDA 13 / cuDNN 9 libraries missing?)"
            )
        if intra_op_threads(options, True) != options.intra_op_threads:
            # made with CUDA's thread count: the CPU that runs it now gets its own
            session = ort.InferenceSession(
                str(model_path), sess_options=build_session_options(options), providers=[CPU]
            )
    return session, provider


def create_like(model_path: Path, options: RuntimeOptions, provider: str, what: str) -> ort.InferenceSession:
    """Another session of the same graph and options (the one for `what`), which must get the main
    session's `provider`."""
    session = ort.InferenceSession(
        str(model_path),
        sess_options=build_session_options(options, provider == CUDA),
        providers=provider_list(options),
    )
    if session.get_providers()[0] != provider:
        raise RuntimeUnavailable(f"the session for {what} got {session.get_providers()[0]}, not {provider}")
    return session
