"""Preallocated, IO-bound batch buffers for one ONNX Runtime session: the CUDA fast path.

One `BoundBatch` per (batch size, concurrent run): a host staging array (pinned on CUDA when CuPy
is there), the input the session reads (device memory on CUDA, the staging array itself on CPU),
preallocated outputs, and an IO binding made once. Addresses never change, which CUDA graphs need.
Each run copies the rows in, runs, and fetches every output to the host in one copy per output.

Rows past the real batch (padding up to a bucket) keep whatever the last run left there: rows are
independent in an inference graph (batch norm in eval mode), and their outputs are sliced away.

Items are host arrays (numpy) or device arrays (anything with `__cuda_array_interface__`, e.g. the
GPU preprocessing output): device rows are copied device to device, never through the host.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

Items = Sequence[Any] | np.ndarray  # rows, or one stacked array

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `n` rows; `n` itself when none does (or there are no buckets)."""
    index = bisect.bisect_left(buckets, n)
    return buckets[index] if index < len(buckets) else n


def is_device_array(item: Any) -> bool:
    return hasattr(item, "__cuda_array_interface__")


def pinned_empty(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, bool]:
    """A host array in page-locked memory when CuPy is importable (faster, asynchronous-capable DMA),
    else ordinary memory. Returns (array, pinned)."""
    try:
        import cupyx

        return cupyx.empty_pinned(shape, dtype=dtype), True
    except Exception:  # no CuPy, or no CUDA driver: pageable memory works, only slower
        return np.empty(shape, dtype=dtype), False


class BoundBatch:
    """Buffers and IO binding for batches of exactly `size` rows on `device` ("cpu" or "cuda")."""

    def __init__(
        self,
        session: ort.InferenceSession,
        size: int,
        item_shape: tuple[int, ...],
        output_names: list[str],
        device: str,
        device_id: int,
        graph_id: int | None,
    ) -> None:
        self.size = size
        self.device = device
        self.output_names = output_names
        self.item_shape = item_shape
        shape = (size, *item_shape)
        input_meta = session.get_inputs()[0]
        if device == "cuda":
            self.host, self.pinned = pinned_empty(shape, np.uint8)
            self.host[:] = 0
            self._input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, "cuda", device_id)
            self._input.update_inplace(self.host)
        else:
            self.host, self.pinned = np.zeros(shape, np.uint8), False
            self._input = ort.OrtValue.ortvalue_from_numpy(self.host)  # shares the staging memory
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(input_meta.name, self._input)
        self._outputs = []
        meta = {o.name: o for o in session.get_outputs()}
        for name in output_names:
            out = meta[name]
            dims = [size, *out.shape[1:]]
            if all(isinstance(d, int) for d in dims[1:]) and out.type in _ORT_TYPES:
                dtype = _ORT_TYPES[out.type]
                value = ort.OrtValue.ortvalue_from_shape_and_type(dims, dtype, device, device_id)
                self._binding.bind_ortvalue_output(name, value)
                self._outputs.append(value)
            else:  # a symbolic inner dimension: let ORT allocate it per run (no CUDA graph then)
                self._binding.bind_output(name, device, device_id)
        self.run_options = ort.RunOptions()
        if graph_id is not None:
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def load(self, items: Items) -> None:
        """Copy `items` (at most `size` of them) into rows 0..n-1 of the input the session reads."""
        n = len(items)
        device_rows = [i for i, item in enumerate(items) if is_device_array(item)]
        if len(device_rows) < n:
            if device_rows:
                for i, item in enumerate(items):
                    if not is_device_array(item):
                        self.host[i] = item
            elif isinstance(items, np.ndarray):
                self.host[:n] = items
            else:
                np.stack(items, out=self.host[:n])
            if self.device == "cuda":
                self._input.update_inplace(self.host)
        if device_rows:
            _copy_device_rows(self._input.data_ptr(), items, device_rows, self.device)

    def run(self, session: ort.InferenceSession, n: int) -> dict[str, np.ndarray]:
        session.run_with_iobinding(self._binding, self.run_options)
        fetched = self._binding.copy_outputs_to_cpu()  # fresh host arrays, one copy per output
        return {name: value[:n] for name, value in zip(self.output_names, fetched, strict=True)}


def _copy_device_rows(dst_ptr: int, items: Items, rows: list[int], device: str) -> None:
    """Device-to-device copy of CUDA array items into rows of the bound input (CuPy does the copy)."""
    if device != "cuda":
        raise ValueError("device arrays can only be batched on a CUDA session")
    import cupy

    first = cupy.asarray(items[rows[0]])
    count = max(rows) + 1
    memory = cupy.cuda.UnownedMemory(dst_ptr, first.nbytes * count, None)
    target = cupy.ndarray((count, *first.shape), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))
    for row in rows:
        target[row] = cupy.asarray(items[row])
    # ORT runs on its own stream: the copies must have landed before it reads the input.
    cupy.cuda.get_current_stream().synchronize()
