"""`RemoteEngine`: a front's engine client (core/client.py), the engine being another process.

Admission happens here, by the one `Admission` over the engine's published records (state.py), so an
unknown name, a model that is not ready or a bad option is answered without crossing. An admitted call
crosses as a descriptor; its payload is written once into this front's part of the engine's shared
memory: a model's photos as the pixel rows this front decoded with Pillow, V2 pixels as they came,
images for `auto` and cascades (which the engine routes) as their bytes. A full part is overload.

While the engine is away (not started, restarting) the front is not ready and every call is answered
NotReady (503 / UNAVAILABLE) at once; calls in flight when it went away are answered so too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.admission import Admission
from service.core.call import AdmittedCall
from service.core.image_requests import ImageRequests
from service.core.outcomes import InferOutcome
from service.errors import InvalidArgument, NotReady, Overloaded
from service.lifecycle.records import ModelEntry
from service.metrics import Metrics
from service.preprocess.formats import DecodeLimits
from service.preprocess.images import PreprocessSpec, configure_pillow, preprocess
from service.preprocess.pool import PreprocessPool
from service.runtime.outputs import NOTHING, Wanted
from service.runtime.priorities import DEFAULT, Priority
from service.schemas import Timings
from service.settings import Settings
from service.split.metrics_merge import merge
from service.split.slab import Region, Slab
from service.split.state import EngineState, FrontCatalogue
from service.split.views import ENGINE_AWAY, PublishedViews
from service.split.wire import FrameWriter, Message, error_from, read_frame, unpack_outputs

log = logging.getLogger(__name__)

RECONNECT_S = 0.1
STATE_WAIT_S = 1.0


@dataclass
class _Pending:
    future: asyncio.Future[Message]
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) in the slab


class RemoteEngine(ImageRequests, PublishedViews):
    def __init__(self, settings: Settings, socket_path: str, index: int) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.index = index
        self.metrics = Metrics()
        self.pool = PreprocessPool(
            settings.effective_preprocess_workers,
            settings.max_pending_preprocess,
            aging_s=settings.priority_aging_ms / 1000,
        )
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self._state: EngineState | None = None
        self._admission: Admission | None = None
        self._catalogue: FrontCatalogue | None = None
        self._out: FrameWriter | None = None
        self._slab: Slab | None = None
        self._region: Region | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._connector: asyncio.Task[None] | None = None
        self._first_state = asyncio.Event()
        self._connected = asyncio.Event()  # set by the first state, never cleared
        self._state_arrived = asyncio.Event()
        self._draining = False
        self._stopped = False

    # ------------------------------------------------------------------------------- life cycle
    async def start(self) -> None:
        configure_pillow()
        self._connector = asyncio.create_task(self._connect_forever(), name="engine-connection")

    async def wait_loaded(self) -> None:
        """Wait for the engine's first state with its start-up loads done."""
        while True:
            await self._first_state.wait()
            if self._state is not None and (self._state.ready or not self._state.records):
                return
            self._first_state.clear()

    async def wait_connected(self) -> None:
        """Until the engine's first state arrived. A front listens only then: the kernel sends a shared
        port's new connections to every listener, and a front that could not reach the engine yet
        would answer them 503 (a replacement front, while it starts)."""
        await self._connected.wait()

    def begin_drain(self) -> None:
        self._draining = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        self._fail_pending()
        self.pool.close()
        if self._slab is not None:
            self._slab.close()

    # ------------------------------------------------------------------------------- connection
    async def _connect_forever(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            out = FrameWriter(writer)
            out.send(("hello", self.index))
            try:
                while (messages := await read_frame(reader)) is not None:
                    if self._out is None:
                        self._out = out
                    for message in messages:
                        self._receive(message)
            finally:
                self._out = None
                self._state = None
                self._admission = None
                self._fail_pending()
                writer.close()
            log.warning("event=engine_lost index=%d", self.index)
            await asyncio.sleep(RECONNECT_S)

    def _receive(self, message: Message) -> None:
        kind = message[0]
        if kind in ("done", "error", "controlled", "metrics"):
            pending = self._pending.pop(message[1], None)
            if pending is None:
                return
            if self._region is not None:
                for offset, length in pending.blocks:
                    self._region.free(offset, length)
            if not pending.future.done():
                pending.future.set_result(message)
        elif kind == "done_many":  # one batch's answers to this front's one-image calls (grouped.py)
            self._receive_batch(message)
        elif kind == "state":
            state: EngineState = message[1]
            self._state = state
            self._catalogue = FrontCatalogue(state)
            self._admission = Admission(self._catalogue, self.settings)
            self._first_state.set()
            self._connected.set()
            self._state_arrived.set()
        elif kind == "collect" and self._out is not None:  # the engine gathers every process's series
            self._out.send(("collected", message[1], self.metrics.render().decode()))
        elif kind == "welcome":
            _, name, start, size = message
            if self._slab is None or self._slab.name != name:
                if self._slab is not None:
                    self._slab.close()
                self._slab = Slab.attach(name)
            self._region = Region(start, size)

    def _receive_batch(self, message: Message) -> None:
        _, name, version, rids, packed, timings = message
        outputs = unpack_outputs(packed)
        region = self._region
        for i, rid in enumerate(rids):
            pending = self._pending.pop(rid, None)
            if pending is None:
                continue
            if region is not None:
                for offset, length in pending.blocks:
                    region.free(offset, length)
            if pending.future.done():
                continue
            queue_s, inference_s, total_s = timings[i]
            spent = Timings(
                preprocess_ms=0.0,
                queue_ms=round(queue_s * 1000, 3),
                inference_ms=round(inference_s * 1000, 3),
                total_ms=round(total_s * 1000, 3),
            )
            rows = {key: value[i : i + 1] for key, value in outputs.items()}
            pending.future.set_result(("done", rid, name, version, rows, spent, None, ()))

    def _fail_pending(self) -> None:
        """The engine went away: every call in flight is answered NotReady; the slab part is void."""
        pending, self._pending = self._pending, {}
        self._region = None
        for item in pending.values():
            if not item.future.done():
                item.future.set_result(("error", 0, NotReady.__name__, ENGINE_AWAY, 1.0))

    # ------------------------------------------------------------------------------------ state
    @property
    def draining(self) -> bool:
        return self._draining or self._stopped

    @property
    def ready(self) -> bool:
        state = self._state
        return state is not None and self._out is not None and state.ready and not self.draining

    def readiness(self) -> dict[str, str]:
        return dict(self._state.readiness) if self._state is not None else {}

    def serving(self, name: str) -> bool | None:
        if self._catalogue is None:
            return None
        record = self._catalogue.records.get(name)
        return None if record is None else record.serving() is not None and self.ready

    def label(self, name: str | None) -> str:
        admission = self._admission
        if admission is None:
            return name or "unknown"
        return admission.label(name)

    async def render_metrics(self) -> bytes:
        """Every process's series, gathered by the engine; this front's alone while it is away."""
        own = self.metrics.render()
        out = self._out
        if out is None:
            return merge([(f"front-{self.index}", own.decode())])
        rid = next(self._ids)
        pending = _Pending(asyncio.get_running_loop().create_future())
        self._pending[rid] = pending
        out.send(("metrics", rid))
        reply = await pending.future
        if reply[0] == "error":
            return merge([(f"front-{self.index}", own.decode())])
        text: bytes = reply[2]
        return text

    @property
    def default_model(self) -> str | None:
        return self._admission.default_model if self._admission is not None else None

    def _admission_now(self) -> Admission:
        if self._admission is None or self._out is None:
            raise NotReady(ENGINE_AWAY)
        if self._stopped:  # while draining, what the protocols let in still runs (as in one process)
            raise NotReady("server is shutting down")
        return self._admission

    # --------------------------------------------------------------------------------- requests
    def admit(
        self,
        model: str | None,
        version: int | None = None,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority = DEFAULT,
        request_id: str = "",
        deadline: float | None = None,
    ) -> AdmittedCall:
        admission = self._admission_now()
        target = admission.admit(model, version, top_k=top_k, budget_ms=budget_ms, priority=priority)
        return AdmittedCall(target, request_id, deadline, admission.refine)

    async def infer_images(
        self, call: AdmittedCall, images: Sequence[bytes], wanted: Wanted = NOTHING
    ) -> InferOutcome:
        self._check_count(len(images))
        target = call.target
        catalogue = self._catalogue
        decode_here = catalogue is not None and catalogue.decodes_here(target.name, target.version)
        if target.routed or target.spec is None or not decode_here:  # the engine routes or decodes
            return await self._send(call, wanted, encoded=images)
        spec = PreprocessSpec.from_model_spec(target.spec)
        jobs = [(data, spec, self.limits) for data in images]
        started = time.monotonic()
        rows = await self.pool.run(preprocess, jobs, int(call.priority), places=range(len(images)))
        for _, seconds in rows:
            self.metrics.observe_preprocess(target.name, seconds)
        pixels = np.stack([row for row, _ in rows])
        outcome = await self._send(call, wanted, pixels=pixels, decoded=True)
        preprocess_ms = round((time.monotonic() - started) * 1000 - outcome.timings.total_ms, 3)
        outcome.timings = outcome.timings.model_copy(
            update={
                "preprocess_ms": max(0.0, preprocess_ms),
                "total_ms": round((time.monotonic() - started) * 1000, 3),
            }
        )
        return outcome

    async def infer_pixels(
        self, call: AdmittedCall, pixels: np.ndarray, wanted: Wanted = NOTHING
    ) -> InferOutcome:
        target = call.target
        if target.routed:
            raise InvalidArgument(
                f"'{target.name}' runs models of several resolutions: send encoded images, not pixels"
            )
        assert target.spec is not None
        size = target.spec.crop_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise InvalidArgument(
                f"model '{target.name}' takes uint8 pixels of shape [N, 3, {size}, {size}], "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        self._check_count(pixels.shape[0])
        return await self._send(call, wanted, pixels=pixels)

    # ----------------------------------------------------------------------------- the crossing
    async def _send(
        self,
        call: AdmittedCall,
        wanted: Wanted,
        *,
        pixels: np.ndarray | None = None,
        encoded: Sequence[bytes] = (),
        decoded: bool = False,
    ) -> InferOutcome:
        out, region, slab = self._out, self._region, self._slab
        if out is None or region is None or slab is None:
            raise NotReady(ENGINE_AWAY)
        rid = next(self._ids)
        pending = _Pending(asyncio.get_running_loop().create_future())
        payload: tuple[Any, ...]
        try:
            if pixels is not None:
                offset = self._place(region, pending, pixels.nbytes)
                slab.view(offset, pixels.nbytes)[:] = pixels.reshape(-1)
                payload = ("pixels", offset, pixels.shape, decoded)
            else:
                places = []
                for data in encoded:
                    offset = self._place(region, pending, len(data))
                    slab.view(offset, len(data))[:] = np.frombuffer(data, dtype=np.uint8)
                    places.append((offset, len(data)))
                payload = ("images", tuple(places))
        except Overloaded:
            for offset, length in pending.blocks:
                region.free(offset, length)
            raise
        target = call.target
        self._pending[rid] = pending
        out.send(
            ("infer", rid, target.name, target.version, target.top_k, target.budget_ms, int(target.priority),
             call.deadline, call.request_id, wanted, payload)
        )  # fmt: skip
        try:
            reply = await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            # The client went away: the engine drops the call and still answers, which frees the slab.
            if self._out is out and rid in self._pending:
                out.send(("cancel", rid))
            raise
        return await self._outcome(reply)

    @staticmethod
    def _place(region: Region, pending: _Pending, length: int) -> int:
        offset = region.alloc(length)
        if offset is None:
            raise Overloaded(
                f"this front's shared memory is full ({region.used} of {region.size} bytes in flight)",
                retry_after=0.1,
            )
        pending.blocks.append((offset, length))
        return offset

    async def _outcome(self, reply: Message) -> InferOutcome:
        if reply[0] == "error":
            raise error_from(reply[2], reply[3], reply[4])
        _, _, name, version, outputs, timings, route, cached = reply
        entry = self._entry(name, version)
        waited = time.monotonic()
        # A version the engine loaded for this call (lazily) is news here until its state arrives: its
        # labels come with it (they are read at load).
        while (entry is None or not entry.labels) and time.monotonic() - waited < STATE_WAIT_S:
            self._state_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_arrived.wait(), STATE_WAIT_S)
            entry = self._entry(name, version)
        if entry is None or not entry.labels:
            raise NotReady(f"model '{name}' version {version} is not known here yet")
        return InferOutcome(entry, unpack_outputs(outputs), timings, route, cached)

    def _entry(self, name: str, version: int | None) -> ModelEntry | None:
        record = self._catalogue.records.get(name) if self._catalogue is not None else None
        return record.versions.get(version) if record is not None and version is not None else None

    async def load_model(self, name: str) -> None:
        await self._control("load", name, False)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        await self._control("unload", name, unload_dependents)

    async def _control(self, operation: str, name: str, dependents: bool) -> None:
        out = self._out
        if out is None:
            raise NotReady(ENGINE_AWAY)
        rid = next(self._ids)
        pending = _Pending(asyncio.get_running_loop().create_future())
        self._pending[rid] = pending
        out.send(("control", rid, operation, name, dependents))
        reply = await pending.future
        if reply[0] == "error":
            raise error_from(reply[2], reply[3], reply[4])
