"""Preallocated, IO-bound batch buffers for one ONNX Runtime session: the CUDA fast path.

One `BoundBatch` per (batch size, concurrent run): a host staging array (pinned on CUDA when CuPy
is there), the input the session reads (device memory on CUDA, the staging array itself on CPU),
preallocated outputs, and an IO binding made once. Addresses never change, which CUDA graphs need.
Each run copies the rows in, runs, and fetches every output to the host in one copy per output.

On CUDA with CuPy, rows go in through service/runtime/device.py: on the buffer set's own non-blocking
stream, one copy per run of contiguous rows (a decoded batch's rows lie back to back on the device),
only the n rows of the batch (not the whole bucket), then that stream alone is synchronised. Without
CuPy, host rows are staged and the whole bucket is copied (OrtValue.update_inplace).

Rows past the real batch (padding up to a bucket) keep whatever the last run left there: rows are
independent in an inference graph (batch norm in eval mode), and their outputs are sliced away.

Items are host arrays (numpy) or device arrays (anything with `__cuda_array_interface__`, e.g. the
GPU preprocessing output): device rows are copied device to device, never through the host.

`graph_id`: the CUDA graph this buffer set's batch of this size replays (ORT `gpu_graph_id`); -1 runs
without capturing or replaying one (buffers made under load must not capture a graph then).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from service.runtime.device import DeviceContext, RowLoader
from service.runtime.device import is_device_array as is_device_array

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
        context: DeviceContext | None = None,
    ) -> None:
        self.size = size
        self.session = session  # the binding is this session's: runs go through it alone
        self.device = device
        self.output_names = output_names
        self.item_shape = item_shape
        shape = (size, *item_shape)
        input_meta = session.get_inputs()[0]
        self._loader: RowLoader | None = None
        if device == "cuda":
            if context is not None:
                self.host, self.pinned = context.pinned_empty(shape, np.uint8), True
            else:
                self.host, self.pinned = pinned_empty(shape, np.uint8)
            self.host[:] = 0
            self._input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, "cuda", device_id)
            self._input.update_inplace(self.host)
            if context is not None:
                row_bytes = int(np.prod(item_shape))
                self._loader = RowLoader(context, self.host, self._input.data_ptr(), row_bytes)
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
        if self._loader is not None:
            self._loader.load(items)
            return
        n = len(items)
        if not isinstance(items, np.ndarray) and any(map(is_device_array, items)):
            raise ValueError("device rows need CuPy (the `gpu` extra) and a CUDA session")
        if isinstance(items, np.ndarray):
            self.host[:n] = items
        else:
            np.stack(items, out=self.host[:n])
        if self.device == "cuda":  # without CuPy: the whole bucket goes (update_inplace copies it all)
            self._input.update_inplace(self.host)

    def run(self, n: int) -> dict[str, np.ndarray]:
        self.session.run_with_iobinding(self._binding, self.run_options)
        fetched = self._binding.copy_outputs_to_cpu()  # fresh host arrays, one copy per output
        return {name: value[:n] for name, value in zip(self.output_names, fetched, strict=True)}
