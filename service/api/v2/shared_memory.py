"""Triton's system shared memory extension on the V2 data plane: inputs read from, and outputs written to,
a registered region (service/core/shared_memory.py) named by the tensor's parameters
`shared_memory_region`, `shared_memory_byte_size` and `shared_memory_offset` (default 0). Shared by
HTTP and gRPC. An input is a numpy view on the mapping (no copy); an output is written there and
answered without data, its parameters saying where it is. CUDA shared memory is not offered: its
register call answers UNAVAILABLE (HTTP 400), its status lists no region.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.v2 import dataplane as v2
from service.api.v2 import tensors
from service.core.shared_memory import Region, SharedMemoryRegions
from service.errors import InvalidArgument, Unsupported

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
CUDA_UNSUPPORTED = (
    "CUDA shared memory is not supported by this server; use system shared memory "
    "(/v2/systemsharedmemory, SystemSharedMemoryRegister) or send the data in the request"
)


SPLIT_MODE = (
    "system shared memory is not offered in split mode (EFFNET_FRONT_PROCESSES > 0): a region registered "
    "with one front would be unknown to the others; send the data in the request"
)


def regions_or_refuse(regions: SharedMemoryRegions | None) -> SharedMemoryRegions:
    """The process's regions; None (split mode's fronts) is refused as unsupported."""
    if regions is None:
        raise Unsupported(SPLIT_MODE)
    return regions


def names_region(parameters: Mapping[str, Any]) -> bool:
    return REGION in parameters


def placement(parameters: Mapping[str, Any], where: str) -> tuple[str, int, int]:
    """(region, offset, byte_size) from a tensor's parameters."""
    region, size, offset = parameters.get(REGION), parameters.get(BYTE_SIZE), parameters.get(OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{where}: '{REGION}' must name a registered region")
    for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{where}: '{key}' must be a whole number >= 0")
    assert isinstance(size, int) and isinstance(offset, int)
    return region, offset, size


def input_from_region(
    regions: SharedMemoryRegions,
    name: str,
    datatype: str,
    shape: Sequence[int],
    parameters: Mapping[str, Any],
) -> tensors.TensorData:
    region, offset, size = placement(parameters, f"input '{name[:64]}'")
    view = regions.view(region, offset, size)
    dims = tensors.check_shape(shape)
    if datatype == tensors.BYTES:
        return tensors.decode_bytes_elements(bytes(view), math.prod(dims))
    dtype = tensors.NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name[:64]}': unknown datatype '{datatype[:32]}'")
    needed = math.prod(dims) * dtype.itemsize
    if size != needed:
        raise InvalidArgument(
            f"input '{name[:64]}': {BYTE_SIZE} is {size}, shape {list(dims)} of {datatype} needs {needed}"
        )
    return np.frombuffer(view, dtype=dtype).reshape(dims)


def write_outputs(regions: SharedMemoryRegions, response: v2.InferResponse) -> dict[str, dict[str, Any]]:
    """Write the outputs whose request named a region there; returns their response parameters by name."""
    placed: dict[str, dict[str, Any]] = {}
    for output in response.outputs:
        asked = output.requested.parameters if output.requested is not None else {}
        if not names_region(asked):
            continue
        region, offset, size = placement(asked, f"output '{output.name}'")
        data = output.data
        raw = (
            np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
            if isinstance(data, np.ndarray)
            else tensors.encode_bytes_elements(data)
        )
        regions.write(region, offset, size, raw)
        placed[output.name] = {REGION: region, BYTE_SIZE: len(raw), **({OFFSET: offset} if offset else {})}
    return placed


def status_rows(regions: SharedMemoryRegions, name: str = "") -> list[dict[str, Any]]:
    return [_row(region) for region in regions.status(name)]


def _row(region: Region) -> dict[str, Any]:
    return {"name": region.name, "key": region.key, "offset": region.offset, "byte_size": region.byte_size}


def refuse_cuda() -> None:
    raise Unsupported(CUDA_UNSUPPORTED)
