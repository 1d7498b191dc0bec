"""The engine's per-batch path for one-image pixel calls (service/split/grouped.py), on a real engine (the
tiny model), its real batchers and a real Unix socket, spoken to as a front speaks: every call gets
exactly one answer, the same rows the general path gives, and errors where a call cannot run."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from service.runtime.outputs import NOTHING
from service.runtime.priorities import DEFAULT
from service.split.engine_side import EngineServer
from service.split.slab import Slab
from service.split.wire import CANCELLED, FrameWriter, Message, read_frame
from tests.tiny_model import SIZE
from tests.unit.conftest import EngineStarter

ROW = 3 * SIZE * SIZE


class Front:
    """A front's side of the socket: pixels written into its part of the slab, calls sent in frames,
    answers collected per call id (a batch's answers split as remote.py does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.out = reader, FrameWriter(writer)
        self.writer = writer
        self.answers: dict[int, list[Message]] = {}
        self.batches = 0
        self.slab: Slab | None = None
        self.start = 0
        self._reading: asyncio.Task[None] | None = None

    async def connect(self, index: int) -> None:
        self.out.send(("hello", index))
        while self.slab is None:
            frame = await asyncio.wait_for(read_frame(self.reader), 5)
            assert frame is not None
            for message in frame:
                if message[0] == "welcome":
                    self.slab, self.start = Slab.attach(message[1]), message[2]
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (frame := await read_frame(self.reader)) is not None:
            for message in frame:
                if message[0] == "done_many":
                    self.batches += 1
                    _, name, version, rids, outputs, _ = message
                    for i, rid in enumerate(rids):
                        self.answers.setdefault(rid, []).append(("done", rid, name, version, outputs, i))
                elif message[0] in ("done", "error"):
                    self.answers.setdefault(message[1], []).append(message)

    def place(self, slot: int, pixels: np.ndarray) -> int:
        assert self.slab is not None
        offset = self.start + slot * ROW * 4
        self.slab.view(offset, pixels.nbytes)[:] = pixels.reshape(-1)
        return offset

    def call(
        self,
        rid: int,
        offset: int,
        shape: tuple[int, ...] = (1, 3, SIZE, SIZE),
        model: str = "tiny",
        deadline: float | None = None,
    ) -> Message:
        payload = ("pixels", offset, shape, False)
        return ("infer", rid, model, None, 1, None, int(DEFAULT), deadline, "", NOTHING, payload)

    async def answered(self, rids: list[int], within_s: float = 10) -> None:
        deadline = time.monotonic() + within_s
        while not all(rid in self.answers for rid in rids):
            assert time.monotonic() < deadline, f"unanswered: {[r for r in rids if r not in self.answers]}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.writer.close()
        if self._reading is not None:
            self._reading.cancel()
        if self.slab is not None:
            self.slab.close()
            self.slab = None


@pytest.fixture
async def serve(tiny_repository: Path, start_engine: EngineStarter, tmp_path: Path) -> AsyncIterator[object]:
    servers: list[tuple[EngineServer, Slab]] = []
    fronts: list[Front] = []
    slabs: list[Slab] = []

    async def start(**settings: object) -> tuple[EngineServer, Front]:
        engine = await start_engine(tiny_repository, **settings)
        slab = Slab.create(1 << 20)
        server = EngineServer(engine, slab, fronts=2)
        path = str(tmp_path / f"engine{len(servers)}.sock")
        await server.start(path)
        servers.append((server, slab))
        slabs.append(slab)
        front = Front(*await asyncio.open_unix_connection(path))
        await front.connect(0)
        fronts.append(front)
        return server, front

    yield start
    for front in fronts:
        await front.close()
    for server, _ in servers:
        await server.close()
        await server.engine.stop()
    del servers[:]
    for slab in slabs:
        # A batcher's worker thread drops its batch's rows (views of the slab) just after answering.
        for _ in range(100):
            gc.collect()
            try:
                slab.close()
                break
            except BufferError:
                await asyncio.sleep(0.02)


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 3, SIZE, SIZE), dtype=np.uint8)


def probabilities(answer: Message) -> np.ndarray:
    if answer[0] == "done" and len(answer) == 6:  # one row of a batch's answer
        dtype, shape, data = answer[4]["probabilities"]
        return np.frombuffer(data, dtype).reshape(shape)[answer[5]]
    dtype, shape, data = answer[4]["probabilities"]
    return np.frombuffer(data, dtype).reshape(shape)[0]


async def test_a_frame_of_one_image_calls_is_answered_per_batch_with_the_general_paths_rows(serve) -> None:  # type: ignore[no-untyped-def]
    server, front = await serve()
    photos = [pixels(seed) for seed in range(6)]
    offsets = [front.place(i, photo) for i, photo in enumerate(photos)]
    for rid, offset in enumerate(offsets, start=1):
        front.out.send(front.call(rid, offset))
    await front.answered(list(range(1, 7)))
    assert server.grouped.taken == 6
    assert front.batches >= 1 and front.batches < 6  # answers left together, per batch
    assert all(len(front.answers[rid]) == 1 for rid in range(1, 7))
    # The same photos, two per call: the general path (several images), answered one message each.
    general = [front.place(6 + i, np.concatenate([photos[i], photos[i]])) for i in range(6)]
    for i, offset in enumerate(general):
        front.out.send(front.call(100 + i, offset, shape=(2, 3, SIZE, SIZE)))
    await front.answered([100 + i for i in range(6)])
    assert server.grouped.taken == 6
    for i in range(6):
        ((kind, *_),) = front.answers[100 + i]
        assert kind == "done"
        grouped, general = front.answers[i + 1][0], front.answers[100 + i][0]
        np.testing.assert_allclose(probabilities(grouped), probabilities(general), rtol=1e-6)


async def test_calls_that_cannot_run_are_answered_with_their_error(serve) -> None:  # type: ignore[no-untyped-def]
    server, front = await serve()
    offset = front.place(0, pixels(0))
    front.out.send(front.call(1, offset, deadline=time.monotonic() - 1))  # deadline passed
    front.out.send(front.call(2, offset, shape=(1, 3, SIZE + 1, SIZE + 1)))  # wrong shape: general path
    front.out.send(front.call(3, offset, model="nosuch"))  # unknown: general path
    front.out.send(front.call(4, offset))
    await front.answered([1, 2, 3, 4])
    assert [front.answers[rid][0][0] for rid in (1, 2, 3, 4)] == ["error", "error", "error", "done"]
    assert front.answers[1][0][2] == "DeadlineExceeded"
    assert front.answers[2][0][2] == "InvalidArgument" and f"[N, 3, {SIZE}, {SIZE}]" in front.answers[2][0][3]
    assert front.answers[3][0][2] == "UnknownModel"
    assert server.grouped.taken == 1


async def test_a_full_queue_refuses_the_calls_beyond_it_with_a_retry_hint(serve) -> None:  # type: ignore[no-untyped-def]
    # One batch of one at a time, each 1.4 s on the emulated device: the queue holds 2, the rest is overload.
    server, front = await serve(
        emulate_device="b0:1000", max_batch_size=1, instances=1, max_queue_size=2, request_timeout_s=30
    )
    offset = front.place(0, pixels(0))
    front.out.send(front.call(1, offset))
    await asyncio.sleep(0.3)  # taken: running
    for rid in range(2, 7):
        front.out.send(front.call(rid, offset))
    await front.answered([4, 5, 6], within_s=5)
    refused = [front.answers[rid][0] for rid in (4, 5, 6)]
    assert all(m[0] == "error" and m[2] == "Overloaded" and m[4] is not None for m in refused), refused
    assert 2 not in front.answers and 3 not in front.answers  # queued
    front.out.send(("cancel", 3))  # a queued call the client gave up: answered cancelled at once
    await front.answered([3], within_s=1)
    assert front.answers[3] == [("error", 3, CANCELLED, "cancelled", None)]
    await front.answered([1, 2], within_s=10)
    assert [front.answers[rid][0][0] for rid in (1, 2)] == ["done", "done"]
    assert all(len(answers) == 1 for answers in front.answers.values())


async def test_a_front_that_goes_away_frees_its_part_only_once_its_running_calls_ended(serve) -> None:  # type: ignore[no-untyped-def]
    server, front = await serve(emulate_device="b0:1000", max_batch_size=1, instances=1, request_timeout_s=30)
    offset = front.place(0, pixels(0))
    front.out.send(front.call(1, offset))
    front.out.send(front.call(2, offset))
    await asyncio.sleep(0.3)  # 1 runs, 2 is queued
    engine = server.engine
    entry = engine.lifecycle.records["tiny"].serving()
    assert entry is not None and entry.in_flight == 1  # one lease for the group of two
    await front.close()
    await asyncio.sleep(0.1)
    assert 0 in server._leaving and entry.batcher is not None and entry.batcher.queue_depth == 0
    await asyncio.wait_for(asyncio.gather(*server._leaving[0]), 5)  # the running batch ended
    assert entry.in_flight == 0
