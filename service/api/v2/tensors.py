"""V2 tensors on the wire, independent of transport: datatypes, raw little-endian data, typed values
(JSON `data`, gRPC typed contents), and BYTES elements with 4-byte little-endian length prefixes."""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidArgument

BYTES = "BYTES"
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")
# Far above any real request; stops a forged shape from asking for a huge allocation.
_MAX_ELEMENTS = 1 << 31
_MAX_DIMS = 32  # numpy's own limit is 64

TensorData = np.ndarray | list[bytes]


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}")


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if len(shape) > _MAX_DIMS:
        raise InvalidArgument(f"tensor shape has {len(shape)} dimensions, at most {_MAX_DIMS}")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"tensor shape {list(dims)} has a negative dimension")
    # The non-zero dimensions too: an empty tensor of [0, 10**5, 10**5, 10**5] is still beyond numpy.
    if math.prod(d for d in dims if d) > _MAX_ELEMENTS:
        raise InvalidArgument(f"tensor shape {list(dims)} is too large")
    return dims


def decode_bytes_elements(raw: bytes, count: int | None = None) -> list[bytes]:
    """Split BYTES tensor data: each element is a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidArgument(f"BYTES tensor data is truncated inside the length of element {len(items)}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument(
                f"BYTES element {len(items)} declares {length} bytes but only {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(f"BYTES tensor data holds {len(items)} elements, its shape needs {count}")
    return items


def encode_bytes_elements(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> TensorData:
    """Raw (binary) tensor data: little-endian, row-major; BYTES length-prefixed."""
    dims = check_shape(shape)
    count = math.prod(dims)
    if datatype == BYTES:
        return decode_bytes_elements(raw, count)
    dtype = _numpy_dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input '{name}': {len(raw)} bytes of data, shape {list(dims)} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Any) -> TensorData:
    """Typed values (JSON `data`, nested or flat, or gRPC typed contents), row-major."""
    dims = check_shape(shape)
    count = math.prod(dims)
    if datatype == BYTES:
        items = [_bytes_element(name, v) for v in _flatten(values)]
        if len(items) != count:
            raise InvalidArgument(
                f"input '{name}' has {len(items)} elements, shape {list(dims)} needs {count}"
            )
        return items
    dtype = _numpy_dtype(name, datatype)
    try:
        array = np.asarray(values, dtype=dtype if datatype != "BOOL" else None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"input '{name}': data is not a valid {datatype} tensor ({exc})") from exc
    if array.dtype == object:
        raise InvalidArgument(f"input '{name}': data is ragged or mixes types")
    if array.size != count:
        raise InvalidArgument(f"input '{name}' has {array.size} elements, shape {list(dims)} needs {count}")
    return array.astype(dtype, copy=False).reshape(dims)


def _numpy_dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype[:32]}'")
    return dtype


def _flatten(values: Any) -> list[Any]:
    if not isinstance(values, list | tuple):
        return [values]
    flat: list[Any] = []
    for value in values:
        flat.extend(_flatten(value))
    return flat


def _bytes_element(name: str, value: Any) -> bytes:
    # JSON carries BYTES elements as UTF-8 strings (the specification); binary content such as an
    # encoded image may instead be sent as {"b64": "<base64>"}.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"input '{name}': invalid base64 in a BYTES element") from exc
    raise InvalidArgument(f"input '{name}': a BYTES element must be a string or {{\"b64\": ...}}")
