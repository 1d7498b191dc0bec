"""Poll mode: rescan the repository every `poll_interval_s`; load new models and changed versions,
unload models removed from disk. Sits above the manager and asks it to act.

Publishing is as users do it: an atomic rename of a finished folder, or a plain `cp -r` of a version or
of a whole model folder. A version whose files are still changing (a copy in progress) is left alone
until they have stayed the same for one poll interval, so a half-copied version is never tried. A
version that fails to load for a real reason is tried again only when its files change, so its error
is logged once per change."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from service.errors import LoadFailed, Overloaded
from service.lifecycle.manager import Lifecycle
from service.lifecycle.records import ModelRecord, ModelState
from service.lifecycle.repository import ModelOnDisk, scan
from service.settings import Settings

log = logging.getLogger(__name__)


class Poller:
    def __init__(self, lifecycle: Lifecycle, settings: Settings) -> None:
        self._lifecycle = lifecycle
        self._settings = settings
        self._seen: dict[tuple[str, int], tuple[int, ...]] = {}  # file signatures at the last scan
        self._task: asyncio.Task[None] | None = None
        self.scans = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="poll-repository")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.poll_interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=poll_failed")

    async def poll_once(self) -> None:
        """One scan: act on what is settled on disk now."""
        lifecycle = self._lifecycle
        on_disk = await asyncio.to_thread(scan, self._settings.repository)
        self.scans += 1
        for name, found in on_disk.items():
            model = self._settled(found)
            if model is None:
                continue
            record = lifecycle.records.get(name)
            if record is None:
                record = lifecycle.discover(model, wanted=True)
                log.info("event=model_found model=%s versions=%s", name, ",".join(map(str, model.versions)))
            if not record.wanted or (lifecycle.lazy and record.serving() is None):
                lifecycle.sync(record, model)
                continue
            if _changed(record, model):
                with contextlib.suppress(LoadFailed, Overloaded):
                    await lifecycle.load(name, reason="poll", found=model)
        for name, record in lifecycle.records.items():
            if name not in on_disk and record.on_disk and record.path is not None:
                record.on_disk = False
                record.reason = f"model '{name}' was removed from the repository"
                async with record.lock:
                    await lifecycle.unload_locked(record, "poll", wanted=False)
        live = {(name, number) for name, model in on_disk.items() for number in model.versions}
        live |= {(name, 0) for name in on_disk}
        self._seen = {key: value for key, value in self._seen.items() if key in live}

    def _settled(self, model: ModelOnDisk) -> ModelOnDisk | None:
        """`model` without the versions whose files changed since the last scan; None while its own
        files (config.json, cascade.json) are changing or no version is settled."""
        own_settled = self._remember((model.name, 0), model.signature)
        versions = {
            number: version
            for number, version in model.versions.items()
            if self._remember((model.name, number), version.signature)
        }
        if not own_settled or (model.cascade is None and model.config_error is None and not versions):
            return None
        if len(versions) < len(model.versions):
            waiting = sorted(set(model.versions) - set(versions))
            log.debug("event=version_still_changing model=%s versions=%s", model.name, waiting)
        return dataclasses.replace(model, versions=versions)

    def _remember(self, key: tuple[str, int], signature: tuple[int, ...]) -> bool:
        """Whether `signature` is what the last scan saw for `key` (then it is settled)."""
        previous = self._seen.get(key)
        self._seen[key] = signature
        return previous == signature


def _changed(record: ModelRecord, model: ModelOnDisk) -> bool:
    if model.config != record.config or model.config_error != record.config_error:
        return True
    targets = model.config.version_policy.select(list(model.versions))
    for number in targets:
        entry = record.versions.get(number)
        if entry is None or entry.signature != model.versions[number].signature:
            return True
        if entry.ready and entry.config != model.config:
            return True
        if not entry.ready and entry.state is not ModelState.FAILED:
            return True
    # A version no longer targeted retires once a targeted one serves; while the targets failed (and
    # their files have not changed), the old version serves on and there is nothing to do.
    targets_serve = any(record.versions[n].ready for n in targets)
    return targets_serve and any(e.ready and n not in targets for n, e in record.versions.items())
