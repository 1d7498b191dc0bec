"""The engine's path for the call most clients make: one image of pixels (V2 pixels, or a photo a front
decoded) for one model. The engine's Python then pays per frame and per batch, not per call:

- a frame's such calls are admitted once per (model, version, options) group, and their rows are
  queued on the model's batcher as they lie in the shared memory, with neither a task nor a future each
  (`Batcher.enqueue`; each item's answer is a `_Call`);
- when a batch finishes, each front gets one message with its calls' rows of that batch, one array per
  output, and the front splits it (remote.py, "done_many").

Anything else takes the general path (engine_side.EngineServer._infer), which answers it as the single
process would: several images, encoded images, extra outputs, models whose answers are cached, a model
still to be loaded, a routed name, a shape that is wrong, and any error found while admitting.

Every call taken here gets exactly one answer: its rows, or an error (expired while queued, a failed
batch, overload, cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.cache.keys import output_options
from service.core.engine import Engine
from service.core.executor import check_queue_room
from service.errors import DeadlineExceeded, NotReady, Overloaded, ServiceError
from service.lifecycle.records import ModelEntry, ModelRecord
from service.runtime.batch_queue import Item
from service.runtime.batcher import BEFORE_QUEUED, Batcher, ItemResult
from service.runtime.priorities import Priority
from service.split.slab import Slab
from service.split.wire import FrameWriter, Message, error_reply, pack_outputs

log = logging.getLogger(__name__)

GroupKey = tuple[Any, ...]  # (name, version, top_k, budget_ms, priority) as the front sent them


@dataclass(frozen=True, slots=True)
class _Plan:
    """What serves one group: the model version, its batcher, the row shape it takes."""

    record: ModelRecord
    entry: ModelEntry
    batcher: Batcher
    priority: Priority
    shape: tuple[int, ...]  # (1, 3, S, S): one image


class _Group:
    """The calls of one group, holding their model version (a lease) and its load share until the last
    is answered."""

    __slots__ = ("entry", "left", "count", "engine")

    def __init__(self, engine: Engine, entry: ModelEntry, count: int) -> None:
        self.engine, self.entry, self.left, self.count = engine, entry, count, count
        entry.hold()
        batcher = entry.batcher
        assert batcher is not None
        capacity = batcher.config.max_batch_size * batcher.config.instances
        engine.metrics.load.enter(entry.name, count, capacity)

    def one_done(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.entry.release()
            self.engine.metrics.load.leave(self.entry.name, self.count)


class _Call:
    """One call's place in a batch: the batcher answers it here (batch_queue.Answer)."""

    __slots__ = ("front", "rid", "group", "received", "finished")

    def __init__(self, front: FrontCalls, rid: int, group: _Group, received: float) -> None:
        self.front, self.rid, self.group, self.received = front, rid, group, received
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, result: ItemResult) -> None:
        if not self.finished:
            self.finished = True
            self.front.answered(self, result)

    def set_exception(self, exception: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.front.failed(self, exception)

    def cancel(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        self.front.failed(self, asyncio.CancelledError())
        return True


class FrontCalls:
    """One front's calls on this path: what is open (for cancel and disconnect) and the answers of the
    current loop turn, which leave as one message per model version."""

    def __init__(self, out: FrameWriter) -> None:
        self.out = out
        self.open: dict[int, tuple[Batcher, Item]] = {}
        self._answered: list[tuple[_Call, ItemResult]] = []
        self._closed = False
        self._drained: asyncio.Future[None] | None = None

    def answered(self, call: _Call, result: ItemResult) -> None:
        if not self._answered:
            asyncio.get_running_loop().call_soon(self._flush)
        self._answered.append((call, result))

    def failed(self, call: _Call, error: BaseException) -> None:
        if not isinstance(error, (ServiceError, asyncio.CancelledError)):
            log.error("event=split_call_crashed rid=%d", call.rid, exc_info=error)
        self.out.send(error_reply(call.rid, error))
        self._finish(call)

    def _flush(self) -> None:
        answered, self._answered = self._answered, []
        by_version: dict[tuple[str, int | None], list[tuple[_Call, ItemResult]]] = {}
        for call, result in answered:
            entry = call.group.entry
            by_version.setdefault((entry.name, entry.version), []).append((call, result))
        now = time.monotonic()
        for (name, version), calls in by_version.items():
            outputs = {
                key: np.stack([result.outputs[key] for _, result in calls]) for key in calls[0][1].outputs
            }
            rids = [call.rid for call, _ in calls]
            timings = [(result.queue_s, result.inference_s, now - call.received) for call, result in calls]
            self.out.send(("done_many", name, version, rids, pack_outputs(outputs), timings))
            for call, _ in calls:
                self._finish(call)

    def _finish(self, call: _Call) -> None:
        self.open.pop(call.rid, None)
        call.group.one_done()
        if self._closed and not self.open and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def cancel(self, rid: int) -> None:
        """The front's client gave up: a queued call is dropped (and answered cancelled); one already in
        a running batch is answered when the batch ends."""
        found = self.open.get(rid)
        if found is not None:
            found[0].drop([found[1]])

    def close(self) -> asyncio.Future[None] | None:
        """The front went away: drop its queued calls. Returns what to await before a front that
        replaces it may reuse its shared memory (calls in running batches still read it), or None."""
        self._closed = True
        by_batcher: dict[int, tuple[Batcher, list[Item]]] = {}
        for batcher, item in list(self.open.values()):
            by_batcher.setdefault(id(batcher), (batcher, []))[1].append(item)
        for batcher, items in by_batcher.values():
            batcher.drop(items)
        if not self.open:
            return None
        self._drained = asyncio.get_running_loop().create_future()
        return self._drained


class GroupedCalls:
    """Takes a frame's one-image pixel calls onto the batchers; returns the others."""

    def __init__(self, engine: Engine, slab: Slab) -> None:
        self.engine = engine
        self.slab = slab
        self.taken = 0  # calls answered per batch (for tests and the bench)

    def take(self, front: FrontCalls, messages: Iterable[Message]) -> list[Message]:
        """Queue the calls this path serves; the rest, in order, for the general path."""
        rest: list[Message] = []
        groups: dict[GroupKey, list[Message]] = {}
        for message in messages:
            payload, wanted = message[10], message[9]
            if payload[0] != "pixels" or payload[2][0] != 1 or wanted.any:
                rest.append(message)
            else:
                groups.setdefault(message[2:7], []).append(message)
        for key, calls in groups.items():
            plan = self._plan(key)
            if plan is None:
                rest.extend(calls)
            else:
                rest.extend(self._queue(front, plan, calls))
        return rest

    def _plan(self, key: GroupKey) -> _Plan | None:
        name, version, top_k, budget_ms, priority = key
        engine = self.engine
        try:
            call = engine.admit(name, version, top_k=top_k, budget_ms=budget_ms, priority=Priority(priority))
            target = call.target
            if target.routed or target.record is None or target.spec is None:
                return None
            entry = engine.lifecycle.leases.pick(target.record, target.version)
        except (ServiceError, ValueError):
            return None  # the general path answers it with this very error
        if entry is None or entry.batcher is None or entry.batcher.closing:
            return None  # to be loaded first (lazily), or going away
        if engine.cache.wanted(entry, output_options(target)):
            return None
        size = target.spec.crop_size
        return _Plan(target.record, entry, entry.batcher, target.priority, (1, 3, size, size))

    def _queue(self, front: FrontCalls, plan: _Plan, calls: list[Message]) -> list[Message]:
        """Queue the group's calls that fit; answer those that do not (overload, deadline passed)."""
        rest: list[Message] = []
        mine: list[tuple[int, Item]] = []
        batcher, priority, out = plan.batcher, plan.priority, front.out
        now = time.monotonic()
        timeout = self.engine.settings.request_timeout_s
        accepted: list[tuple[Message, float]] = []
        for message in calls:
            if tuple(message[10][2]) != plan.shape:
                rest.append(message)  # the general path says what is wrong with it
                continue
            deadline = message[7] or now + timeout
            rid = message[1]
            if deadline <= now:
                batcher.count_expired(1)
                out.send(error_reply(rid, DeadlineExceeded(BEFORE_QUEUED)))
                continue
            try:
                check_queue_room(plan.entry, len(accepted) + 1, priority)
            except Overloaded as exc:
                out.send(error_reply(rid, exc))
                continue
            accepted.append((message, deadline))
        if not accepted:
            return rest
        group = _Group(self.engine, plan.entry, len(accepted))
        plan.record.last_used = now
        view, size = self.slab.view, 3 * plan.shape[2] * plan.shape[3]
        row_shape = plan.shape[1:]
        for message, deadline in accepted:
            rid = message[1]
            row = view(message[10][1], size).reshape(row_shape)
            call = _Call(front, rid, group, now)
            mine.append((rid, Item(row, call, now, deadline, priority)))
        items = [item for _, item in mine]
        try:
            batcher.enqueue(items)
        except NotReady as exc:
            for _, item in mine:
                item.future.set_exception(NotReady(exc.message))
            return rest
        for rid, item in mine:
            front.open[rid] = (batcher, item)
        self.taken += len(mine)
        return rest
