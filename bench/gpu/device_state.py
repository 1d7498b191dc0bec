"""What the device check records about the machine beside its figures: the cuDNN that really loaded (a
depthwise-convolution slowdown is version-specific), the GPU's clocks and power state (a GPU left in a
low clock state measures slow), its memory in use. Each is None where there is no GPU to ask."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from typing import Any

# nvidia-smi --query-gpu fields: the clocks now and at most, the performance state, power and the reasons
# the clocks are held down (a thermal or power cap shows there).
GPU_STATE_FIELDS = (
    "pstate",
    "clocks.sm",
    "clocks.max.sm",
    "clocks.mem",
    "clocks.max.mem",
    "power.draw",
    "power.limit",
    "temperature.gpu",
    "clocks_event_reasons.active",
    "compute_mode",
)
CUDNN_LIBRARY = "libcudnn.so.9"


def nvidia_smi(query: str, fields: tuple[str, ...] | str) -> list[str] | None:
    """One nvidia-smi --query-<query> line of GPU 0 split into its fields; None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    names = fields if isinstance(fields, str) else ",".join(fields)
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{query}={names}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return [part.strip() for part in lines[0].split(",")] if out.returncode == 0 and lines else None


def gpu_memory_used_mib() -> float | None:
    """Memory in use on GPU 0 (all processes; the check is the only user), from nvidia-smi."""
    values = nvidia_smi("gpu", "memory.used")
    try:
        return float(values[0]) if values else None
    except ValueError:
        return None


def gpu_state() -> dict[str, str | None] | None:
    """GPU 0's clocks, performance state and power (nvidia-smi's words), None without nvidia-smi. All
    fields in one query, else one query each: a driver that lacks a field (older ones name the clock
    event reasons `clocks_throttle_reasons`) refuses the whole query, and costs only that field."""
    if shutil.which("nvidia-smi") is None:
        return None
    values = nvidia_smi("gpu", GPU_STATE_FIELDS)
    if values is not None and len(values) == len(GPU_STATE_FIELDS):
        return dict(zip(GPU_STATE_FIELDS, values, strict=True))
    state: dict[str, str | None] = {}
    for field in GPU_STATE_FIELDS:
        one = nvidia_smi("gpu", field)
        state[field] = one[0] if one else None
    return state


def cudnn_version(device: str) -> dict[str, Any] | None:
    """The cuDNN that loads on the loader path (cudnnGetVersion: 91000 is 9.10.0) and the one the ONNX
    Runtime package was built against. None on the CPU: no cuDNN is in play there."""
    if device != "cuda":
        return None
    found: dict[str, Any] = {"library": CUDNN_LIBRARY, "loaded": None, "built_with": None}
    try:
        library = ctypes.CDLL(CUDNN_LIBRARY)
        library.cudnnGetVersion.restype = ctypes.c_size_t
        number = int(library.cudnnGetVersion())
        found["loaded"] = f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    except (OSError, AttributeError) as exc:
        found["error"] = str(exc)[:200]
    try:
        from onnxruntime.capi import build_and_package_info as built

        found["built_with"] = getattr(built, "cudnn_version", None)
        found["onnxruntime_cuda"] = getattr(built, "cuda_version", None)
    except ImportError:
        pass
    return found


def process_gpu_memory_mib(pid: int) -> float | None:
    """GPU memory held by process `pid` (its CUDA context, arenas, graphs), from nvidia-smi's compute
    apps; None without nvidia-smi, 0.0 for a process that holds none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    total = 0.0
    for line in out.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                total += float(parts[1])
            except ValueError:
                return None
    return total
