"""CUDA memory, streams and copies for the GPU path, through CuPy: the one place that touches them.

- Everything happens on the model's `cuda_device_id`, never on whatever device is current in the
  calling thread: the stream, device allocations and pinned host buffers are made under
  `cupy.cuda.Device(device_id)`.
- Work goes on a dedicated non-blocking stream, never the legacy default stream (which waits for, and
  makes wait, all other work on the device), and is waited for by synchronising that stream alone,
  never the whole device.
- Rows are copied in as few copies as their addresses allow (`contiguous_runs`): the rows of one
  decoded batch lie back to back in device memory and go in one copy; host rows are staged in pinned
  memory and only the n rows of a batch travel, not the whole bucket.
- CuPy compiles kernels into a cache under $HOME, which a service user may not have
  (`/nonexistent`): `ensure_cupy_cache_dir` points it at a writable folder first.

The arithmetic (which copies, which addresses) is plain Python over integers, tested on the CPU with a
stand-in for CuPy; the calls themselves run on a GPU (tests/gpu).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MEMCPY_DEFAULT = 4  # cudaMemcpyDefault: the direction follows from the addresses (unified addressing)


@dataclass(frozen=True)
class Copy:
    dst: int
    src: int
    nbytes: int


def contiguous_runs(rows: Sequence[tuple[int, int]], row_bytes: int) -> list[tuple[int, int, int]]:
    """(destination row, source address) pairs -> (first destination row, source address, row count)
    runs: consecutive destination rows whose sources are back to back become one run."""
    runs: list[tuple[int, int, int]] = []
    for row, src in sorted(rows):
        if runs:
            first, start, count = runs[-1]
            if row == first + count and src == start + count * row_bytes:
                runs[-1] = (first, start, count + 1)
                continue
        runs.append((row, src, 1))
    return runs


def device_pointer(item: Any, row_bytes: int) -> int | None:
    """The address of a C-contiguous device array of exactly `row_bytes` bytes, else None."""
    interface = item.__cuda_array_interface__
    shape, strides = tuple(interface["shape"]), interface.get("strides")
    itemsize = np.dtype(interface["typestr"]).itemsize
    if int(np.prod(shape)) * itemsize != row_bytes:
        return None
    if strides is not None:
        expected, step = [], itemsize
        for extent in reversed(shape):
            expected.append(step)
            step *= extent
        if tuple(reversed(expected)) != tuple(strides):
            return None
    return int(interface["data"][0])


def is_device_array(item: Any) -> bool:
    return hasattr(item, "__cuda_array_interface__")


def ensure_cupy_cache_dir(environ: Any = os.environ) -> str:
    """CUPY_CACHE_DIR as set, else CuPy's default (~/.cupy/kernel_cache) where it can be created, else a
    folder under the temporary directory (set in `environ`, which CuPy reads when it compiles)."""
    if environ.get("CUPY_CACHE_DIR"):
        return str(environ["CUPY_CACHE_DIR"])
    default = Path(os.path.expanduser("~")) / ".cupy" / "kernel_cache"
    try:
        default.mkdir(parents=True, exist_ok=True)
        if os.access(default, os.W_OK):
            return str(default)
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"effnet-cupy-cache-{os.getuid()}"
    fallback.mkdir(parents=True, exist_ok=True)
    environ["CUPY_CACHE_DIR"] = str(fallback)
    return str(fallback)


class DeviceContext:
    """One CUDA device and one dedicated non-blocking stream on it (CuPy underneath; `cupy` may be a
    stand-in in tests)."""

    def __init__(self, device_id: int, cupy: Any = None) -> None:
        ensure_cupy_cache_dir()
        if cupy is None:
            cupy = importlib.import_module("cupy")
        self.cupy = cupy
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self.stream = cupy.cuda.Stream(non_blocking=True)

    @property
    def stream_ptr(self) -> int:
        return int(self.stream.ptr)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> Any:
        """Device memory on this device, ordered on this stream."""
        with self.cupy.cuda.Device(self.device_id), self.stream:
            return self.cupy.empty(shape, dtype=dtype)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        """Page-locked host memory (asynchronous copies), allocated while this device is current."""
        with self.cupy.cuda.Device(self.device_id):
            import cupyx

            return cupyx.empty_pinned(shape, dtype=dtype)

    def copy(self, copies: Sequence[Copy]) -> None:
        """Enqueue the copies on this stream (device<->device or pinned host->device)."""
        runtime = self.cupy.cuda.runtime
        with self.cupy.cuda.Device(self.device_id):
            for c in copies:
                runtime.memcpyAsync(c.dst, c.src, c.nbytes, MEMCPY_DEFAULT, self.stream_ptr)

    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        """A pitched copy (a decoded image whose rows are padded) on this stream."""
        with self.cupy.cuda.Device(self.device_id):
            self.cupy.cuda.runtime.memcpy2DAsync(
                dst, dst_pitch, src, src_pitch, width, height, MEMCPY_DEFAULT, self.stream_ptr
            )

    def synchronize(self) -> None:
        """Wait for this stream's work, and only this stream's."""
        self.stream.synchronize()


class RowLoader:
    """Fills rows 0..n-1 of one bound batch input (at `dst_ptr`, `row_bytes` a row) from host and device
    rows: host rows staged into `host` (pinned), then one copy per run of contiguous rows, and only
    the n rows asked for; then this context's stream is synchronised (ORT reads the input on its own
    stream). Returns the copies made (for tests and logs)."""

    def __init__(self, context: DeviceContext, host: np.ndarray, dst_ptr: int, row_bytes: int) -> None:
        self.context = context
        self.host = host
        self.dst_ptr = dst_ptr
        self.row_bytes = row_bytes
        self._keep: list[Any] = []  # contiguous copies made for a load, alive until its copies land

    def plan(self, items: Sequence[Any] | np.ndarray) -> list[Copy]:
        n = len(items)
        host_base = int(self.host.ctypes.data)
        device_rows: list[tuple[int, int]] = []
        host_rows: list[int] = []
        for index in range(n):
            item = items[index]
            pointer = device_pointer(item, self.row_bytes) if is_device_array(item) else None
            if is_device_array(item) and pointer is None:  # not contiguous: make it so, on the device
                cupy = self.context.cupy
                with cupy.cuda.Device(self.context.device_id), self.context.stream:
                    item = cupy.ascontiguousarray(cupy.asarray(item))
                self._keep.append(item)
                pointer = device_pointer(item, self.row_bytes)
            if pointer is not None:
                device_rows.append((index, pointer))
            else:
                host_rows.append(index)
        if isinstance(items, np.ndarray) and len(host_rows) == n:
            self.host[:n] = items
        else:
            for index in host_rows:
                self.host[index] = items[index]
        rows = device_rows + [(i, host_base + i * self.row_bytes) for i in host_rows]
        return [
            Copy(self.dst_ptr + first * self.row_bytes, src, count * self.row_bytes)
            for first, src, count in contiguous_runs(rows, self.row_bytes)
        ]

    def load(self, items: Sequence[Any] | np.ndarray) -> list[Copy]:
        try:
            copies = self.plan(items)
            self.context.copy(copies)
            self.context.synchronize()
        finally:
            self._keep.clear()
        return copies
