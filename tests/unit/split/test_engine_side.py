"""The engine's side of split mode, on a real engine (the tiny model) and a real Unix socket: every
front learns each new state, even one that another front's arrival brought first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.split.engine_side import EngineServer
from service.split.slab import Slab
from service.split.state import EngineState
from service.split.wire import FrameWriter, Message, read_frame
from tests.unit.conftest import EngineStarter


async def next_state(reader: asyncio.StreamReader) -> EngineState:
    while True:
        frame = await asyncio.wait_for(read_frame(reader), 5)
        assert frame is not None
        states: list[Message] = [m for m in frame if m[0] == "state"]
        if states:
            state: EngineState = states[-1][1]
            return state


async def test_each_front_gets_every_new_state(
    tiny_repository: Path, start_engine: EngineStarter, tmp_path: Path
) -> None:
    engine = await start_engine(tiny_repository)
    slab = Slab.create(1 << 20)
    server = EngineServer(engine, slab, fronts=2)
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    try:
        reader_a, writer_a = await asyncio.open_unix_connection(path)
        FrameWriter(writer_a).send(("hello", 0))
        first = await next_state(reader_a)
        assert first.ready and not first.draining and "tiny" in first.readiness
        engine.begin_drain()  # a new state, which the next front's arrival captures first
        reader_b, writer_b = await asyncio.open_unix_connection(path)
        FrameWriter(writer_b).send(("hello", 1))
        assert (await next_state(reader_b)).draining
        assert (await next_state(reader_a)).draining
        writer_a.close()
        writer_b.close()
    finally:
        await server.close()
        slab.close()
