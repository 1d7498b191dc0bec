"""Framing: messages sent in one loop turn leave as one frame and arrive in order."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import numpy as np

from service.split.wire import FrameWriter, encode, pack_outputs, read_frame, unpack_outputs


async def test_one_loop_turn_is_one_frame(tmp_path: Path) -> None:
    received: list[list[tuple[object, ...]]] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (frame := await read_frame(reader)) is not None:
            received.append(frame)
        done.set()

    path = str(tmp_path / "s.sock")
    server = await asyncio.start_unix_server(serve, path=path)
    _, writer = await asyncio.open_unix_connection(path)
    out = FrameWriter(writer)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    for i in range(5):
        out.send(("done", i, rows[i % 3]))
    await asyncio.sleep(0.05)
    out.send(("cancel", 99))
    await asyncio.sleep(0.05)
    out.close()
    await asyncio.wait_for(done.wait(), 5)
    server.close()
    assert [len(frame) for frame in received] == [5, 1] and out.frames == 2
    assert [m[1] for m in received[0]] == [0, 1, 2, 3, 4]
    assert received[0][4][2].tolist() == [4.0, 5.0, 6.0, 7.0]


async def test_a_torn_stream_reads_as_its_end() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode([("hello", 1)])[:-2])
    reader.feed_eof()
    assert await read_frame(reader) is None


def test_outputs_cross_as_bytes_and_come_back_equal() -> None:
    outputs = {
        "probabilities": np.random.default_rng(0).random((3, 5), dtype=np.float32),
        "cam_classes": np.arange(6, dtype=np.int64).reshape(3, 2),
        "ragged": np.array([np.zeros(2), np.zeros(3)], dtype=object),
    }
    back = unpack_outputs(pickle.loads(pickle.dumps(pack_outputs(outputs), protocol=5)))
    for name in ("probabilities", "cam_classes"):
        assert back[name].dtype == outputs[name].dtype and np.array_equal(back[name], outputs[name])
    assert back["ragged"].dtype == object and len(back["ragged"]) == 2
