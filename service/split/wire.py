"""Framing between fronts and the engine: each frame is a 4-byte length and a pickled list of messages
(tuples). A `FrameWriter` collects what one event-loop turn sends and writes it as one frame, so a
burst of requests (or a batch's results) costs one system call and one pickle, not one per message.

Pickle protocol 5 was measured against json and marshal for these tuples (the report of issue 36);
messages hold only builtins, numpy arrays and the service's own dataclasses. Both ends are processes of
one server started from one installation, so no untrusted party writes to the socket.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

import numpy as np

from service import errors
from service.errors import InferenceFailed, ServiceError, retry_after

HEADER = struct.Struct("<I")
CANCELLED = "Cancelled"  # the error a cancelled call is answered with (the front that cancelled drops it)
MAX_FRAME = 1 << 30

Message = tuple[Any, ...]


def encode(messages: list[Message]) -> bytes:
    body = pickle.dumps(messages, protocol=5)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Message] | None:
    """The next frame's messages; None at the end of the stream (the peer is gone)."""
    try:
        header = await reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ConnectionError(f"frame of {length} bytes")
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    messages: list[Message] = pickle.loads(body)
    return messages


class FrameWriter:
    """Messages sent in one loop turn leave together, in one frame."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[Message] = []
        self.frames = 0
        self.messages = 0

    def send(self, message: Message) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(message)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._writer.is_closing():
            return
        self.frames += 1
        self.messages += len(pending)
        self._writer.write(encode(pending))

    def close(self) -> None:
        self._writer.close()


Raw = tuple[str, tuple[int, ...], bytes]


def pack_outputs(outputs: dict[str, np.ndarray]) -> dict[str, Raw | np.ndarray]:
    """A result's outputs as (dtype, shape, bytes): pickling the bytes costs half what pickling the
    arrays does (bench/split_framing.py). Object arrays (a cascade's ragged outputs) go as they are."""
    return {
        name: value if value.dtype == object else (value.dtype.str, value.shape, value.tobytes())
        for name, value in outputs.items()
    }


def unpack_outputs(packed: dict[str, Raw | np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: value if isinstance(value, np.ndarray) else np.frombuffer(value[2], value[0]).reshape(value[1])
        for name, value in packed.items()
    }


def error_reply(rid: int, error: BaseException) -> Message:
    """A call's error as its front reads it back (`error_from`): a ServiceError as its class, a
    cancellation as CANCELLED, anything else as an internal error (the caller logs it)."""
    if isinstance(error, asyncio.CancelledError):
        return ("error", rid, CANCELLED, "cancelled", None)
    if isinstance(error, ServiceError):
        return ("error", rid, type(error).__name__, error.message, retry_after(error))
    return ("error", rid, InferenceFailed.__name__, "internal error", None)


def error_from(name: str, message: str, retry: float | None) -> ServiceError:
    """The engine's error as the class it was raised as (a ServiceError the front maps as usual)."""
    if name == CANCELLED:
        raise asyncio.CancelledError
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ServiceError)):
        cls = ServiceError
    error = cls.__new__(cls)
    ServiceError.__init__(error, message)
    if retry is not None:
        error.retry_after = retry  # type: ignore[attr-defined]
    return error
