"""Leases: which version of a model serves a request, and holding it while the request runs.

`pick` chooses the ready version (the newest, or the one asked for); `hint` the version a request would
get even before it is loaded (with a memory budget models load on their first request); `acquire` holds
it for one request, starting that lazy load when needed, until `release`. A version being retired takes
no new leases and waits for those it has (ModelEntry.wait_idle) before its session is dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.errors import DeadlineExceeded, LoadFailed, NotReady, UnknownModel
from service.lifecycle.records import ModelEntry, ModelRecord, ModelState
from service.lifecycle.views import why_not_ready

Loader = Callable[[str, str], Awaitable[None]]


class Leases:
    def __init__(self, lazy_ok: Callable[[ModelRecord], bool], load: Loader) -> None:
        """`lazy_ok(record)`: whether a request may load `record` now; `load(name, reason)` loads it."""
        self._lazy_ok = lazy_ok
        self._load = load

    def pick(self, record: ModelRecord, version: int | None = None) -> ModelEntry | None:
        """The ready version for a request (newest when `version` is None). None: not loaded, but a
        request may load it lazily. Raises UnknownModel (no such version) or NotReady."""
        name = record.name
        if version is not None:
            entry = record.versions.get(version)
            if entry is not None and entry.ready:
                return entry
            if entry is not None and entry.state is ModelState.LOADING:
                raise NotReady(f"model '{name}' version {version} is loading")
            if entry is not None and self._lazy_ok(record) and entry.state is not ModelState.FAILED:
                if version in record.config.version_policy.select(list(record.versions)):
                    return None
            ready = ", ".join(str(e.version) for e in record.ready_versions()) or "none"
            state = f" ({entry.state.value})" if entry is not None else ""
            raise UnknownModel(
                f"model '{name}' has no ready version {version}{state}; ready versions: {ready}"
            )
        entry = record.serving()
        if entry is not None:
            return entry
        if self._lazy_ok(record):
            return None
        raise NotReady(why_not_ready(record))

    def hint(self, record: ModelRecord, version: int | None = None) -> ModelEntry:
        """The version a request would get, loaded or not: for checks that need only its metadata."""
        entry = self.pick(record, version)
        if entry is not None:
            return entry
        chosen = record.versions.get(version) if version is not None else record.target_newest()
        if chosen is None or chosen.spec is None:
            raise NotReady(why_not_ready(record))
        return chosen

    async def acquire(self, record: ModelRecord, version: int | None, deadline: float | None) -> ModelEntry:
        """Hold the ready version of `record` for one request (loading it first if lazy). Pair with
        `release`. Raises UnknownModel, NotReady, Overloaded (no room), DeadlineExceeded."""
        entry = self.pick(record, version)
        while entry is None:
            await self._await_lazy_load(record, deadline)
            entry = self.pick(record, version)
        entry.hold()
        record.last_used = time.monotonic()
        return entry

    @staticmethod
    def release(entry: ModelEntry) -> None:
        entry.release()

    async def _await_lazy_load(self, record: ModelRecord, deadline: float | None) -> None:
        if record.load_task is None or record.load_task.done():
            record.load_task = asyncio.create_task(self._lazy_load(record.name), name=f"load-{record.name}")
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"deadline passed while model '{record.name}' was loading")
        try:
            await asyncio.wait_for(asyncio.shield(record.load_task), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"deadline passed while model '{record.name}' was loading") from None
        except LoadFailed as exc:
            raise NotReady(exc.message, retry_after=5.0) from None

    async def _lazy_load(self, name: str) -> None:
        await self._load(name, "lazy")
