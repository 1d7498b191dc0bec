"""ONNX Runtime execution providers by name: the one place they are spelled."""

from __future__ import annotations

from pathlib import Path
from typing import Final

CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"


def nvidia_gpu_present() -> bool:
    """Whether the kernel exposes an NVIDIA GPU. Asking onnxruntime-gpu for CUDA without one makes it
    log alarming errors before it falls back to CPU, so `auto` does not ask then."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
