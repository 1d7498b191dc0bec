"""The engine process's side of split mode: the fronts connect to its Unix socket; each sends admitted
calls as small descriptors (payloads lie in the engine's shared memory), and gets back per call its
outcome or its error, grouped per loop turn (so one batch's results leave together). The engine's state
goes to every front when it changes (state.py).

Every call gets exactly one answer: its outcome, its error, or, when the front cancelled it, an error
the front discards. A front that goes away has its calls cancelled; a front that replaces it (same
index, same part of the slab) is served once those are done, so nothing still reads its part.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from service.core.engine import Engine
from service.core.executor import check_queue_room
from service.errors import ServiceError
from service.runtime.priorities import Priority
from service.split.grouped import FrontCalls, GroupedCalls
from service.split.metrics_merge import merge
from service.split.slab import Slab
from service.split.state import capture, signature
from service.split.wire import FrameWriter, Message, error_reply, pack_outputs, read_frame

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 0.05
COLLECT_TIMEOUT_S = 1.0


@dataclass(eq=False)
class FrontConnection:
    index: int
    out: FrameWriter
    calls: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # the general path's
    state: object = None  # the last state sent to this front
    grouped: FrontCalls = field(init=False)  # one-image pixel calls, answered per batch (grouped.py)

    def __post_init__(self) -> None:
        self.grouped = FrontCalls(self.out)


class EngineServer:
    def __init__(self, engine: Engine, slab: Slab, fronts: int) -> None:
        self.engine = engine
        self.slab = slab
        self.fronts = fronts
        self._connections: set[FrontConnection] = set()
        self._leaving: dict[int, list[asyncio.Future[None]]] = {}  # a gone front's calls, by index
        self._server: asyncio.Server | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._signature: tuple[object, ...] | None = None
        self._state: Any = None
        self.received = 0
        # A /metrics gathering: the texts so far, done when every front answered, how many were asked.
        self._collecting: dict[int, tuple[list[tuple[str, str]], asyncio.Future[None], int]] = {}
        self._tokens = itertools.count(1)
        self.grouped = GroupedCalls(engine, slab)

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=path)
        self._publisher = asyncio.create_task(self._publish(), name="publish-state")

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.out.close()

    # ------------------------------------------------------------------------------------- state
    def _current_state(self) -> Any:
        now = signature(self.engine)
        if now != self._signature or self._state is None:
            self._signature, self._state = now, capture(self.engine)
        return self._state

    async def _publish(self) -> None:
        while True:
            self._send_state()
            await asyncio.sleep(STATE_INTERVAL_S)

    def _send_state(self) -> None:
        """The current state to every front that has not had it yet."""
        state = self._current_state()
        for connection in self._connections:
            if connection.state is not state:
                connection.state = state
                connection.out.send(("state", state))

    # ------------------------------------------------------------------------------------ fronts
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_frame(reader)
        if not hello or hello[0][0] != "hello":
            writer.close()
            return
        index = int(hello[0][1])
        leaving = self._leaving.pop(index, [])
        if leaving:  # the front this one replaces: its calls may still read the part of the slab
            await asyncio.gather(*leaving, return_exceptions=True)
        connection = FrontConnection(index, FrameWriter(writer))
        start, size = self.slab.part(index, self.fronts)
        connection.out.send(("welcome", self.slab.name, start, size))
        self._connections.add(connection)
        self._send_state()
        log.info("event=front_connected index=%d", index)
        try:
            while (messages := await read_frame(reader)) is not None:
                calls = [message for message in messages if message[0] == "infer"]
                if calls:
                    self.received += len(calls)
                    general = self.grouped.take(connection.grouped, calls)
                    counted = self.engine.metrics.split_calls
                    counted.labels("batch").inc(len(calls) - len(general))
                    if general:
                        counted.labels("call").inc(len(general))
                    for call in general:
                        self._start_call(connection, call)
                for message in messages:
                    if message[0] != "infer":
                        self._dispatch(connection, message)
        finally:
            self._connections.discard(connection)
            for task in connection.calls.values():
                task.cancel()
            drained = connection.grouped.close()
            self._leaving[index] = [*connection.calls.values(), *([drained] if drained is not None else [])]
            writer.close()
            log.warning("event=front_disconnected index=%d in_flight=%d", index, len(connection.calls))

    def _start_call(self, connection: FrontConnection, message: Message) -> None:
        """The general path: one task per call."""
        rid = message[1]
        task = asyncio.create_task(self._infer(connection, message))
        connection.calls[rid] = task
        task.add_done_callback(lambda _: connection.calls.pop(rid, None))

    def _dispatch(self, connection: FrontConnection, message: Message) -> None:
        kind = message[0]
        if kind == "cancel":
            running = connection.calls.get(message[1])
            if running is not None:
                running.cancel()
            else:
                connection.grouped.cancel(message[1])
        elif kind == "metrics":
            rid = message[1]
            task = asyncio.create_task(self._metrics(connection, rid))
            connection.calls[rid] = task
            task.add_done_callback(lambda _: connection.calls.pop(rid, None))
        elif kind == "collected":
            waiting = self._collecting.get(message[1])
            if waiting is not None and not waiting[1].done():
                waiting[0].append((f"front-{connection.index}", message[2]))
                if len(waiting[0]) >= waiting[2]:
                    waiting[1].set_result(None)
        elif kind == "control":
            rid = message[1]
            task = asyncio.create_task(self._control(connection, message))
            connection.calls[rid] = task
            task.add_done_callback(lambda _: connection.calls.pop(rid, None))

    async def _infer(self, connection: FrontConnection, message: Message) -> None:
        _, rid, name, version, top_k, budget_ms, priority, deadline, request_id, wanted, payload = message
        out = connection.out
        try:
            call = self.engine.admit(
                name,
                version,
                top_k=top_k,
                budget_ms=budget_ms,
                priority=Priority(priority),
                request_id=request_id,
                deadline=deadline,
            )
            if payload[0] == "pixels":
                _, offset, shape, decoded = payload
                target = call.target
                if decoded and target.record is not None:  # photos: their queue room, as run_images checks
                    entry = self.engine.lifecycle.leases.hint(target.record, target.version)
                    check_queue_room(entry, shape[0], target.priority)
                pixels = self.slab.view(offset, math.prod(shape)).reshape(shape)
                outcome = await self.engine.infer_pixels(call, pixels, wanted)
            else:
                images = [self.slab.view(offset, length).tobytes() for offset, length in payload[1]]
                outcome = await self.engine.infer_images(call, images, wanted)
            model = outcome.model
            out.send(
                ("done", rid, model.name, model.version, pack_outputs(outcome.outputs), outcome.timings,
                 outcome.route, outcome.cached)
            )  # fmt: skip
        except (ServiceError, asyncio.CancelledError) as exc:
            out.send(error_reply(rid, exc))
        except Exception as exc:
            log.exception("event=split_call_crashed request_id=%s", request_id)
            out.send(error_reply(rid, exc))

    async def _metrics(self, asking: FrontConnection, rid: int) -> None:
        """Every front's series and the engine's, merged, for the front that serves a /metrics."""
        token = next(self._tokens)
        texts: list[tuple[str, str]] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fronts = list(self._connections)
        self._collecting[token] = (texts, done, len(fronts))
        for connection in fronts:
            connection.out.send(("collect", token))
        try:
            await asyncio.wait_for(asyncio.shield(done), COLLECT_TIMEOUT_S)
        except TimeoutError:
            log.warning("event=metrics_partial fronts=%d answered=%d", len(fronts), len(texts))
        finally:
            del self._collecting[token]
        texts.append(("engine", self.engine.metrics.render().decode()))
        asking.out.send(("metrics", rid, merge(texts)))

    async def _control(self, connection: FrontConnection, message: Message) -> None:
        _, rid, operation, name, dependents = message
        try:
            if operation == "load":
                await self.engine.load_model(name)
            else:
                await self.engine.unload_model(name, dependents)
            self._signature = None  # every front learns the new state before the answer
            self._send_state()
            connection.out.send(("controlled", rid))
        except ServiceError as exc:
            connection.out.send(error_reply(rid, exc))


async def run_engine(settings: Any, socket_path: str, fronts: int, slab_bytes: int) -> int:
    """The engine process: load, serve the fronts, and on SIGTERM drain and stop."""
    import signal

    from service.metrics import Metrics

    engine = Engine(settings, Metrics())
    slab = Slab.create(slab_bytes)
    server = EngineServer(engine, slab, fronts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    exit_code = 0
    try:
        await engine.start()
        await server.start(socket_path)
        log.info("event=engine_listening socket=%s slab=%s bytes=%d fronts=%d", socket_path, slab.name,
                 slab.size, fronts)  # fmt: skip
        loaded = asyncio.create_task(engine.wait_loaded())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if loaded.done() and loaded.exception() is not None:
            log.error("event=startup_failed reason=%r", str(loaded.exception()))
            exit_code = 1
        else:
            await stopped
        started = time.monotonic()
        engine.begin_drain()
        await server.close()
        await engine.stop()
        log.info("event=engine_stopped seconds=%.2f", time.monotonic() - started)
    finally:
        if not slab.close():  # removed from /dev/shm all the same; unmapped when the process exits
            log.info("event=slab_still_viewed name=%s", slab.name)
    return exit_code
