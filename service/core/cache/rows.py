"""One image's output rows <-> bytes, the form both cache backends hold: a small JSON header (name,
dtype, shape per output) and the raw arrays. Decoding gives read-only views into the stored bytes."""

from __future__ import annotations

import json
import struct

import numpy as np

Rows = dict[str, np.ndarray]
_LENGTH = struct.Struct("<I")


def encode_rows(rows: Rows) -> bytes:
    header = [[name, str(array.dtype), list(array.shape)] for name, array in rows.items()]
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(np.ascontiguousarray(array).tobytes() for array in rows.values())
    return _LENGTH.pack(len(head)) + head + body


def decode_rows(data: bytes) -> Rows:
    """Raises ValueError on bytes that are not an encoded answer (the caller treats it as a miss)."""
    try:
        (length,) = _LENGTH.unpack_from(data)
        header = json.loads(data[_LENGTH.size : _LENGTH.size + length])
        offset = _LENGTH.size + length
        rows: Rows = {}
        for name, dtype, shape in header:
            kind = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            rows[name] = np.frombuffer(data, kind, count, offset).reshape(shape)
            offset += count * kind.itemsize
    except (struct.error, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a cached answer: {exc}") from exc
    if offset != len(data):
        raise ValueError("not a cached answer: length mismatch")
    return rows
