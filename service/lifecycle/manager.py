"""The lifecycle manager: which versions of which models are loaded, and the leases requests hold on them.

Rules:
- Per model, one asyncio lock serialises load, reload and unload, so two simultaneous loads of one model
  load it once. Across models, loads run one at a time (loading is CPU-bound, and the resident-memory
  difference measured around a load then belongs to that load alone).
- A request holds its version from `acquire` to `release` (the executor does both). A version being
  retired (a newer one took over, or the model is unloaded) takes no new requests, waits for those it
  holds, drains its batcher, then drops its session and hands freed memory back to the OS.
- A new version loads and warms while the old one serves; the switch is one assignment of state. A
  version that fails to load leaves the versions already serving untouched.
- Model control (Triton's): `none` loads everything at start; `poll` also rescans the repository
  (polling.py); `explicit` loads `--models` at start and the rest through the repository API. With a
  memory budget, models load lazily on their first request and the least recently used idle model makes
  room (budget.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.errors import LoadFailed, Overloaded, UnknownModel
from service.lifecycle import loading
from service.lifecycle.budget import MemoryBudget, release_freed_memory
from service.lifecycle.configs import CASCADE_FILE, ModelConfig
from service.lifecycle.files import HashCache, ModelLoadError, read_spec, recorded_identity
from service.lifecycle.leases import Leases
from service.lifecycle.records import ModelEntry, ModelRecord, ModelState
from service.lifecycle.repository import ModelOnDisk, scan, scan_model
from service.metrics import Metrics
from service.model_spec import MODEL_FILE
from service.names import unknown_name_message
from service.runtime.providers import CPU, CUDA
from service.runtime.session import RuntimeUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)

# After the drain timeout: how long a batch already running may still take before stop gives up on it.
_ABORT_GRACE_S = 2.0


class Lifecycle:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.records: dict[str, ModelRecord] = {}
        self.hashes = HashCache(settings.hash_cache)
        self.budget = MemoryBudget(settings.memory_budget_mb)
        self.leases = Leases(self._lazy_ok, self.load)
        self._load_slot = asyncio.Lock()
        self._startup: asyncio.Task[None] | None = None
        self._retirements: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def lazy(self) -> bool:
        return self.budget.enabled

    # ------------------------------------------------------------------------------------ start, stop
    async def start(self) -> None:
        """Discover the repository and begin the start-up loads; `wait_started` waits for them."""
        on_disk = await asyncio.to_thread(scan, self.settings.repository)
        names = self.settings.model_names
        if self.settings.model_control == "explicit":
            listed = set(names)
            for name, model in on_disk.items():
                self.discover(model, wanted=name in listed)
        elif names:
            for name in names:
                if name in on_disk:
                    self.discover(on_disk[name], wanted=True)
        else:
            for model in on_disk.values():
                self.discover(model, wanted=True)
        for name in names:
            if name not in self.records:
                where = self.settings.repository / name
                why = "no such folder" if not where.is_dir() else "no numbered version folder"
                record = ModelRecord(name, None, on_disk=False, required=True, touched=True)
                record.reason = f"model '{name}' not found in repository {self.settings.repository} ({why})"
                self.records[name] = record
                self.metrics.set_ready(name, False)
                log.error("event=model_failed model=%s reason=%r", name, record.reason)
        eager = [r for r in self.records.values() if r.wanted and r.on_disk and (names or not self.lazy)]
        if self.settings.model_control == "explicit" or self.lazy:
            eager = [r for r in eager if r.name in names]
        for record in eager:
            record.required = not self.lazy
        self._startup = asyncio.create_task(self._load_at_start(eager), name="load-models")

    async def wait_started(self) -> None:
        if self._startup is not None:
            await self._startup

    @property
    def started(self) -> bool:
        return self._startup is not None and self._startup.done()

    async def _load_at_start(self, records: list[ModelRecord]) -> None:
        # Smallest graph first: the cores also serve the models already up, and small models (the
        # default among them, usually) are ready soonest.
        for record in sorted(records, key=lambda r: (r.is_cascade_folder, _graph_size(r))):
            with contextlib.suppress(LoadFailed):  # reported in the record; readiness shows it
                await self.load(record.name, reason="start")

    async def stop(self) -> None:
        """Stop loading; let queued work finish (bounded by drain_timeout_s); release all."""
        self._stopping = True
        for task in (self._startup, *(r.load_task for r in self.records.values())):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        entries = [e for r in self.records.values() for e in r.loaded()]
        closing = [e.batcher.close(drain=True) for e in entries if e.batcher is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*closing), timeout=self.settings.drain_timeout_s)
        except TimeoutError:
            log.error("event=drain_timeout seconds=%s", self.settings.drain_timeout_s)
            # Fail what is still queued; a batch already inside the runtime cannot be interrupted,
            # so wait for it only briefly rather than let a stuck run hold the stop forever.
            aborting = asyncio.gather(*(e.batcher.close(drain=False) for e in entries if e.batcher))
            try:
                await asyncio.wait_for(aborting, timeout=_ABORT_GRACE_S)
            except TimeoutError:
                log.error("event=abandoned_running_batches seconds=%s", _ABORT_GRACE_S)
        for record in self.records.values():
            for entry in record.versions.values():
                if entry.state in (ModelState.READY, ModelState.UNLOADING):
                    entry.state = ModelState.STOPPED
            self.metrics.set_ready(record.name, False)
        for entry in entries:
            if entry.backend is not None:
                entry.backend.close()

    # ------------------------------------------------------------------------------------- discovery
    def discover(self, model: ModelOnDisk, wanted: bool) -> ModelRecord:
        """A model folder found on disk becomes a record (its versions described, none loaded)."""
        record = ModelRecord(model.name, model.path, model.config, model.config_error, wanted=wanted)
        record.cascade = model.cascade
        record.is_cascade_folder = (model.path / CASCADE_FILE).is_file()
        self.sync(record, model)
        self.records[model.name] = record
        self.metrics.set_ready(model.name, False)
        return record

    def sync(self, record: ModelRecord, model: ModelOnDisk) -> None:
        """Entries for versions that appeared on disk (spec read, not loaded). A version whose files
        changed since it failed gets a fresh entry, so it is tried again."""
        record.path, record.config, record.config_error = model.path, model.config, model.config_error
        record.on_disk = True
        if record.is_cascade_folder:
            record.cascade = model.cascade
            if 1 not in record.versions:
                record.versions[1] = ModelEntry(model.name, 1, model.path, kind="cascade")
            return
        for number, version in model.versions.items():
            entry = record.versions.get(number)
            failed = entry is not None and entry.state is ModelState.FAILED
            if entry is not None and not (failed and entry.signature != version.signature):
                continue
            entry = ModelEntry(model.name, number, version.path, signature=version.signature)
            try:
                entry.spec = read_spec(version.path)
            except ModelLoadError as exc:
                entry.fail(str(exc))  # a load logs it; polling tries again only when its files change
            else:
                entry.recorded_as = recorded_identity(entry.spec, model.name, number)
                if entry.recorded_as is not None:
                    log.info(
                        "event=model_json_names_another model=%s version=%d recorded=%s "
                        "note='the folder decides the name and version'",
                        model.name, number, entry.recorded_as,
                    )  # fmt: skip
            record.versions[number] = entry

    async def rescan(self, only: str | None = None) -> None:
        """Pick up models that appeared on disk since start (as not wanted until loaded)."""
        on_disk = await asyncio.to_thread(scan, self.settings.repository)
        for name, model in on_disk.items():
            if (only is None or name == only) and name not in self.records:
                self.discover(model, wanted=False)

    # ------------------------------------------------------------------------------------- lookups
    def record(self, name: str) -> ModelRecord:
        record = self.records.get(name)
        if record is None:
            raise UnknownModel(unknown_name_message(name, self.records))
        return record

    def _lazy_ok(self, record: ModelRecord) -> bool:
        return (
            self.lazy
            and record.wanted
            and record.on_disk
            and record.config_error is None
            and not self._stopping
        )

    # --------------------------------------------------------------------------------- load, unload
    async def load(self, name: str, reason: str = "api", found: ModelOnDisk | None = None) -> None:
        """Load (or reload) `name` as its version policy says: new versions load and warm while the
        old ones serve, then the old ones drain and are released. Raises LoadFailed when no
        wanted version could be loaded (versions already serving keep serving), UnknownModel.
        `found`: what a scan just saw of the folder (else it is scanned again here)."""
        record = self.records.get(name)
        if record is None:
            await self.rescan(only=name)
            record = self.record(name)
        async with record.lock:
            await self._load_locked(record, reason, found)

    async def _load_locked(self, record: ModelRecord, reason: str, found: ModelOnDisk | None) -> None:
        name = record.name
        if found is not None:
            on_disk: ModelOnDisk | None = found
        elif record.path is not None:  # its folder, found on disk: rescan just that
            on_disk = await asyncio.to_thread(scan_model, record.path)
        else:  # configured but absent at start: it may have appeared since
            on_disk = (await asyncio.to_thread(scan, self.settings.repository)).get(name)
        if on_disk is None:
            record.on_disk = False
            record.reason = f"model '{name}' is no longer in the repository"
            raise LoadFailed(f"failed to load '{name}': {record.reason}")
        self.sync(record, on_disk)
        record.touched, record.wanted, record.reason = True, True, None
        if record.config_error is not None:
            record.reason = record.config_error
            if record.is_cascade_folder:
                record.versions[1].fail(record.config_error)
            raise LoadFailed(f"failed to load '{name}': {record.config_error}")
        if record.is_cascade_folder:
            self._load_cascade(record)
            return
        targets = record.config.version_policy.select(list(on_disk.versions))
        if not targets:
            raise LoadFailed(f"failed to load '{name}': its version_policy selects no version on disk")
        failures: list[str] = []
        for number in reversed(targets):  # newest first: it becomes the default soonest
            current = record.versions[number]
            unchanged = current.signature == on_disk.versions[number].signature
            if current.ready and unchanged and current.config == record.config:
                continue
            fresh = current
            if current.runner is not None:  # same number, new files: load beside it, then swap
                fresh = ModelEntry(name, number, current.path, signature=on_disk.versions[number].signature)
            try:
                await self._load_version(record, fresh, reason)
            except ModelLoadError as exc:
                failures.append(f"version {number}: {exc}")
                continue
            if fresh is not current:
                record.versions[number] = fresh
                self._retire(record, current, "reload")
        ready = [n for n in targets if record.versions[n].ready]
        if ready:
            for number, entry in list(record.versions.items()):
                if number not in targets and entry.state in (ModelState.READY, ModelState.LOADING):
                    self._retire(record, entry, reason)
        self._publish_ready(record)
        if failures and not ready:
            raise LoadFailed(f"failed to load '{name}': {'; '.join(failures)}")
        if failures:
            log.warning("event=model_partially_loaded model=%s failures=%r", name, failures)

    def _expected_instances(self, config: ModelConfig, entry: ModelEntry) -> int:
        """The instances a load will run, before it knows its provider: CUDA's when the server is set to
        CUDA, else the CPU rule (more instances, the larger estimate, where `auto` may find no GPU)."""
        gmacs = entry.spec.gmacs if entry.spec is not None else 0.0
        provider = CUDA if self.settings.device == "cuda" else CPU
        return loading.instances_for(self.settings, config, provider, gmacs)

    async def _load_version(self, record: ModelRecord, entry: ModelEntry, reason: str) -> None:
        """Validate, create the session, warm it, start its batcher. Raises ModelLoadError."""
        assert entry.path is not None and entry.version is not None
        entry.state, entry.reason = ModelState.LOADING, None
        config = record.config
        async with self._load_slot:
            try:
                if self.lazy:
                    needed = self.budget.estimate(record, entry, self._expected_instances(config, entry))
                    await self.budget.make_room(needed, record, self.records.values, self._evict)
                loaded = await asyncio.to_thread(
                    loading.load_graph, entry.path, self.settings, config, self.hashes
                )
            except Overloaded:
                entry.state = ModelState.UNLOADED if entry.loaded_at else ModelState.AVAILABLE
                raise
            except RuntimeUnavailable as exc:
                entry.fail(str(exc))
                raise
            except ModelLoadError as exc:
                self._failed(entry, str(exc))
                raise
            except Exception as exc:  # ORT raises its own types for corrupt graphs
                error = ModelLoadError(f"onnxruntime could not load {entry.path / MODEL_FILE}: {exc}")
                self._failed(entry, str(error))
                raise error from exc
        serving = loading.assemble(entry.name, loaded, self.settings, self.metrics)
        entry.spec, entry.labels = loaded.spec, loaded.labels
        entry.recorded_as = recorded_identity(loaded.spec, record.name, entry.version)
        entry.runner, entry.provider = loaded.runner, loaded.runner.provider
        entry.batcher, entry.preprocess, entry.backend = serving.batcher, serving.preprocess, serving.backend
        entry.memory_bytes = record.measured_bytes = entry.measured_load(loaded.memory_bytes, config)
        entry.load_seconds, entry.config, entry.loaded_at = loaded.seconds, config, time.time()
        entry.state = ModelState.READY
        self.metrics.model_loaded(entry.name, str(entry.version), "success", loaded.seconds)
        self.metrics.set_model_memory(entry.name, str(entry.version), entry.memory_bytes)
        log.info(
            "event=model_ready model=%s version=%s provider=%s resolution=%d weights=%s seconds=%.2f "
            "memory_mb=%.1f reason=%s",
            entry.name, entry.version, entry.provider, loaded.spec.crop_size, loaded.spec.weights.kind,
            loaded.seconds, entry.memory_bytes / 2**20, reason,
        )  # fmt: skip

    def _failed(self, entry: ModelEntry, reason: str) -> None:
        entry.fail(reason)
        self.metrics.model_loaded(entry.name, str(entry.version), "failed", None)
        log.error("event=model_failed model=%s version=%s reason=%r", entry.name, entry.version, reason)

    def _load_cascade(self, record: ModelRecord) -> None:
        """A cascade loads nothing itself: its stages are checked (loading.check_cascade)."""
        assert record.cascade is not None
        entry = record.versions[1]
        checked = loading.check_cascade(record.cascade, self.records)
        if isinstance(checked, list):
            entry.fail("; ".join(checked))
            self.metrics.model_loaded(record.name, "1", "failed", None)
            self._publish_ready(record)
            raise LoadFailed(f"failed to load '{record.name}': {entry.reason}")
        entry.spec, entry.labels = checked
        entry.reason, entry.state, entry.loaded_at = None, ModelState.READY, time.time()
        entry.load_seconds, entry.memory_bytes = 0.0, 0
        self.metrics.model_loaded(record.name, "1", "success", 0.0)
        self._publish_ready(record)
        stages = [s.model for s in record.cascade.stages]
        log.info("event=cascade_ready model=%s stages=%s", record.name, ",".join(stages))

    def dependents(self, name: str) -> list[str]:
        """Cascades that use model `name` as a stage."""
        return [
            r.name for r in self.records.values()
            if r.cascade is not None and any(stage.model == name for stage in r.cascade.stages)
        ]  # fmt: skip

    async def unload(self, name: str, reason: str = "api") -> None:
        """Stop new requests to every version of `name` now; let what they hold finish; release."""
        record = self.record(name)
        async with record.lock:
            await self.unload_locked(record, reason, wanted=False)

    async def _evict(self, record: ModelRecord) -> None:
        async with record.lock:
            await self.unload_locked(record, "evicted", wanted=True)

    async def unload_locked(self, record: ModelRecord, reason: str, wanted: bool) -> None:
        """Unload with `record.lock` held by the caller; `wanted`: may load again on a request."""
        record.wanted = wanted
        record.touched = True
        if record.is_cascade_folder:
            cascade = record.versions[1]
            if cascade.ready:
                cascade.state, cascade.reason = ModelState.UNLOADED, "unloaded"
                self.metrics.model_unloaded(record.name, "1", reason)
            self._publish_ready(record)
            return
        retiring = [e for e in record.versions.values() if e.runner is not None]
        for entry in retiring:
            entry.state = ModelState.UNLOADING
        self._publish_ready(record)
        await asyncio.gather(*(self._release(record, e, reason) for e in retiring))

    def _retire(self, record: ModelRecord, entry: ModelEntry, reason: str) -> None:
        """Take `entry` out of service now; drain and release it in the background."""
        if entry.runner is None:
            entry.state, entry.reason = ModelState.UNLOADED, "unloaded"
            return
        if record.versions.get(entry.version or 0) is not entry and entry not in record.retiring:
            record.retiring.append(entry)  # replaced by a reload of the same version number
        if entry.state is ModelState.UNLOADING:  # already draining
            return
        entry.state = ModelState.UNLOADING
        task = asyncio.create_task(self._release(record, entry, reason), name=f"retire-{entry.name}")
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)

    async def _release(self, record: ModelRecord, entry: ModelEntry, reason: str) -> None:
        try:
            await asyncio.wait_for(entry.wait_idle(), timeout=self.settings.drain_timeout_s)
        except TimeoutError:
            log.error("event=unload_drain_timeout model=%s version=%s in_flight=%d", entry.name,
                      entry.version, entry.in_flight)  # fmt: skip
        if entry.batcher is not None:
            await entry.batcher.close(drain=True)
        if entry.backend is not None:
            entry.backend.close()
        entry.batcher, entry.runner, entry.backend = None, None, None
        entry.state, entry.reason = ModelState.UNLOADED, "unloaded"
        if entry in record.retiring:
            record.retiring.remove(entry)
        freed = entry.memory_bytes
        entry.memory_bytes = None
        await asyncio.to_thread(release_freed_memory)
        self.metrics.model_unloaded(entry.name, str(entry.version), reason)
        log.info("event=model_unloaded model=%s version=%s reason=%s memory_mb=%.1f", entry.name,
                 entry.version, reason, (freed or 0) / 2**20)  # fmt: skip

    def _publish_ready(self, record: ModelRecord) -> None:
        self.metrics.set_ready(record.name, record.serving() is not None)

    def memory_in_use(self) -> int:
        return self.budget.in_use(self.records.values())

    def required_ready(self) -> bool:
        return all(r.serving() is not None for r in self.records.values() if r.required)


def _graph_size(record: ModelRecord) -> int:
    newest = record.newest()
    try:
        return (newest.path / MODEL_FILE).stat().st_size if newest and newest.path else 0
    except OSError:
        return 0
