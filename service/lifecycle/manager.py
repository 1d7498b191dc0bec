"""Model lifecycle: discover, load, warm, swap versions, drain, release, and evict under a memory budget.

The engine asks this module for "the ready version of this model" (`acquire`/`release` around each
request) and holds no lifecycle state of its own.

Rules:
- Per model, one asyncio lock serialises load, reload and unload, so two simultaneous loads of one model
  load it once. Across models, loads run one at a time (loading is CPU-bound, and the resident-memory
  difference measured around a load then belongs to that load alone).
- A request holds its version (`in_flight`) from `acquire` to `release`. A version being retired (a newer
  one took over, or the model is unloaded) takes no new requests, waits for those it holds, drains its
  batcher, then drops its session and hands freed memory back to the OS.
- A new version loads and warms while the old one serves; the switch is one assignment of state. A
  version that fails to load leaves the versions already serving untouched.
- Model control (Triton's): `none` loads everything at start; `poll` also rescans the repository;
  `explicit` loads `--models` at start and the rest through the repository API. With a memory budget,
  models load lazily on their first request and the least recently used idle model makes room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.core.names import unknown_name_message
from service.errors import DeadlineExceeded, LoadFailed, NotReady, Overloaded, UnknownModel
from service.lifecycle.memory import release_freed_memory, rss_bytes
from service.lifecycle.records import IndexEntry, ModelEntry, ModelRecord
from service.lifecycle.repository import (
    CASCADE_FILE,
    HashCache,
    ModelLoadError,
    ModelOnDisk,
    ModelState,
    read_spec,
    scan,
    scan_model,
    validate_files,
)
from service.metrics import Metrics
from service.model_spec import LABELS_FILE, MODEL_FILE, ModelSpec, read_labels
from service.preprocess.backends import create_backend
from service.preprocess.images import PreprocessSpec
from service.runtime.batcher import Batcher, BatcherConfig
from service.runtime.session import OrtRunner, RuntimeOptions, RuntimeUnavailable, warmup_batch_sizes
from service.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["logits", "probabilities"]
# Before a model's first load its resident size is estimated from its graph file: the weights plus ORT's
# arenas and warm-up buffers. Measured on CPU (bench/lifecycle.py): b0 147 MB for a 20 MB graph, b7
# 898 MB for 266 MB, lite0 92 MB for 19 MB. After a load the measured figure replaces the estimate.
_ESTIMATE_FACTOR = 3.0
_ESTIMATE_BASE = 96 << 20
# After the drain timeout: how long a batch already running may still take before stop gives up on it.
_ABORT_GRACE_S = 2.0


class Lifecycle:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.records: dict[str, ModelRecord] = {}
        self.hashes = HashCache(settings.hash_cache)
        self._load_slot = asyncio.Lock()
        self._startup: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._retirements: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ------------------------------------------------------------------------------------ start, stop
    @property
    def budget_bytes(self) -> int:
        return self.settings.memory_budget_mb << 20

    @property
    def lazy(self) -> bool:
        return self.settings.memory_budget_mb > 0

    async def start(self) -> None:
        """Discover the repository and begin the start-up loads; `wait_started` waits for them."""
        on_disk = await asyncio.to_thread(scan, self.settings.repository)
        names = self.settings.model_names
        mode = self.settings.model_control
        if mode == "explicit":
            listed = set(names)
            for name, model in on_disk.items():
                self._add(model, wanted=name in listed)
        elif names:
            for name in names:
                if name in on_disk:
                    self._add(on_disk[name], wanted=True)
        else:
            for model in on_disk.values():
                self._add(model, wanted=True)
        for name in names:
            if name not in self.records:
                where = self.settings.repository / name
                why = "no such folder" if not where.is_dir() else "no numbered version folder"
                record = ModelRecord(name, None, on_disk=False, required=True, touched=True)
                record.reason = f"model '{name}' not found in repository {self.settings.repository} ({why})"
                self.records[name] = record
                log.error("event=model_failed model=%s reason=%r", name, record.reason)
        eager = [r for r in self.records.values() if r.wanted and r.on_disk and (names or not self.lazy)]
        if mode == "explicit" or self.lazy:
            eager = [r for r in eager if r.name in names]
        for record in eager:
            record.required = not self.lazy
        for record in self.records.values():
            self.metrics.set_ready(record.name, False)
        self._startup = asyncio.create_task(self._load_at_start(eager), name="load-models")
        if mode == "poll":
            self._poller = asyncio.create_task(self._poll(), name="poll-repository")

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
            try:
                await self.load(record.name, reason="start")
            except LoadFailed:
                pass  # reported in the record; readiness shows it
            except RuntimeUnavailable:
                raise

    def _add(self, model: ModelOnDisk, wanted: bool) -> ModelRecord:
        record = ModelRecord(model.name, model.path, model.config, model.config_error, wanted=wanted)
        record.cascade = model.cascade
        record.is_cascade_folder = (model.path / CASCADE_FILE).is_file()
        self._sync_versions(record, model)
        self.records[model.name] = record
        return record

    def _sync_versions(self, record: ModelRecord, model: ModelOnDisk) -> None:
        """Entries for versions that appeared on disk (spec read, not loaded); gone ones are marked."""
        record.path, record.config, record.config_error = model.path, model.config, model.config_error
        record.on_disk = True
        if record.is_cascade_folder:
            record.cascade = model.cascade
            if 1 not in record.versions:
                record.versions[1] = ModelEntry(model.name, 1, model.path, kind="cascade")
            return
        for number, version in model.versions.items():
            entry = record.versions.get(number)
            if entry is None or (entry.state is ModelState.FAILED and entry.signature != version.signature):
                entry = ModelEntry(model.name, number, version.path, signature=version.signature)
                try:
                    entry.spec = read_spec(version.path, model.name, number)
                except ModelLoadError as exc:
                    entry.reason = str(exc)
                record.versions[number] = entry

    async def stop(self) -> None:
        """Stop loading and polling; let queued work finish (bounded by drain_timeout_s); release all."""
        self._stopping = True
        for task in (self._startup, self._poller, *(r.load_task for r in self.records.values())):
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

    # ------------------------------------------------------------------------------------- lookups
    def record(self, name: str) -> ModelRecord:
        record = self.records.get(name)
        if record is None:
            raise UnknownModel(unknown_name_message(name, self.records))
        return record

    def pick(self, name: str, version: int | None = None) -> ModelEntry | None:
        """The ready version for a request (newest when `version` is None). None: not loaded, but a
        request may load it lazily. Raises UnknownModel (no such model or version) or NotReady."""
        record = self.record(name)
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
        raise NotReady(self._why_not_ready(record))

    def _lazy_ok(self, record: ModelRecord) -> bool:
        return (
            self.lazy
            and record.wanted
            and record.on_disk
            and record.config_error is None
            and not self._stopping
        )

    def _why_not_ready(self, record: ModelRecord) -> str:
        if record.reason:
            return f"model '{record.name}' is not available: {record.reason}"
        newest = record.newest()
        if newest is None:
            return f"model '{record.name}' has no version"
        if any(e.state is ModelState.LOADING for e in record.versions.values()):
            return f"model '{record.name}' is loading"
        if any(e.state is ModelState.UNLOADING for e in record.versions.values()):
            return f"model '{record.name}' is unloading"
        failed = [e for e in record.versions.values() if e.state is ModelState.FAILED]
        if failed:
            return f"model '{record.name}' failed to load: {failed[-1].reason}"
        if not record.wanted:
            return (
                f"model '{record.name}' is not loaded"
                + (" (unloaded)" if newest.state is ModelState.UNLOADED else "")
                + "; load it through the repository API"
            )
        return f"model '{record.name}' is not loaded yet"

    def hint(self, name: str, version: int | None = None) -> ModelEntry:
        """The version a request would get, loaded or not: for checks that need only its metadata."""
        entry = self.pick(name, version)
        if entry is not None:
            return entry
        record = self.record(name)
        chosen = record.versions.get(version) if version is not None else self._target_newest(record)
        if chosen is None or chosen.spec is None:
            raise NotReady(self._why_not_ready(record))
        return chosen

    def _target_newest(self, record: ModelRecord) -> ModelEntry | None:
        targets = record.config.version_policy.select(list(record.versions))
        return record.versions[targets[-1]] if targets else None

    # ------------------------------------------------------------------------------ request leases
    async def acquire(self, name: str, version: int | None, deadline: float | None) -> ModelEntry:
        """Hold the ready version of `name` for one request (loading it first if lazy). Pair with
        `release`. Raises UnknownModel, NotReady, Overloaded (no room), DeadlineExceeded."""
        entry = self.pick(name, version)
        while entry is None:
            record = self.record(name)
            await self._await_lazy_load(record, deadline)
            entry = self.pick(name, version)
        entry.in_flight += 1
        entry._idle.clear()
        entry.last_used = time.time()
        self.records[name].last_used = time.monotonic()
        return entry

    def release(self, entry: ModelEntry) -> None:
        entry.in_flight -= 1
        if entry.in_flight <= 0:
            entry.in_flight = 0
            entry._idle.set()

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
        await self.load(name, reason="lazy")

    # --------------------------------------------------------------------------------- load, unload
    async def load(self, name: str, reason: str = "api") -> None:
        """Load (or reload) `name` as its version policy says: new versions load and warm while the
        old ones serve, then the old ones drain and are released. Raises LoadFailed when no
        wanted version could be loaded (versions already serving keep serving), UnknownModel."""
        record = self.records.get(name)
        if record is None:
            await self.rescan(only=name)
            record = self.record(name)
        async with record.lock:
            await self._load_locked(record, reason)

    async def _load_locked(self, record: ModelRecord, reason: str) -> None:
        name = record.name
        if record.path is not None:  # its folder, found on disk: rescan just that
            on_disk = await asyncio.to_thread(scan_model, record.path)
        else:  # configured but absent at start: it may have appeared since
            on_disk = (await asyncio.to_thread(scan, self.settings.repository)).get(name)
        if on_disk is None:
            record.on_disk = False
            record.reason = f"model '{name}' is no longer in the repository"
            raise LoadFailed(f"failed to load '{name}': {record.reason}")
        self._sync_versions(record, on_disk)
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

    async def _load_version(self, record: ModelRecord, entry: ModelEntry, reason: str) -> None:
        """Validate, create the session, warm it, start its batcher. Raises ModelLoadError."""
        assert entry.path is not None and entry.version is not None
        entry.state, entry.reason = ModelState.LOADING, None
        version_label = str(entry.version)
        async with self._load_slot:
            try:
                if self.lazy:
                    await self._make_room(self._estimate(record, entry), exclude=record)
                start = time.monotonic()
                before = rss_bytes()
                runner, spec, labels = await asyncio.to_thread(self._load_blocking, record, entry)
                seconds = time.monotonic() - start
                grown = rss_bytes() - before
            except Overloaded:
                entry.state = ModelState.UNLOADED if entry.loaded_at else ModelState.AVAILABLE
                raise
            except ModelLoadError as exc:
                entry.fail(str(exc))
                self.metrics.model_loaded(entry.name, version_label, "failed", None)
                log.error("event=model_failed model=%s version=%s reason=%r", entry.name, entry.version,
                          entry.reason)  # fmt: skip
                raise
            except RuntimeUnavailable as exc:
                entry.fail(str(exc))
                raise
            except Exception as exc:  # ORT raises its own types for corrupt graphs
                entry.fail(f"onnxruntime could not load {entry.path / MODEL_FILE}: {exc}")
                self.metrics.model_loaded(entry.name, version_label, "failed", None)
                log.error("event=model_failed model=%s version=%s reason=%r", entry.name, entry.version,
                          entry.reason)  # fmt: skip
                raise ModelLoadError(entry.reason or "load failed") from exc
        entry.spec, entry.labels, entry.runner, entry.provider = spec, labels, runner, runner.provider
        file_size = (entry.path / MODEL_FILE).stat().st_size
        # RSS can even shrink when the load reuses memory freed by an earlier unload: never report less
        # than the graph's own weights.
        entry.memory_bytes = max(grown, file_size)
        record.measured_bytes = entry.memory_bytes
        config = record.config
        max_batch = config.max_batch_size or self.settings.batch_size_for(runner.provider, spec.gmacs)
        instances = config.instances or self.settings.instances_for(runner.provider)
        batcher_config = BatcherConfig(
            max_batch_size=max_batch,
            instances=instances,
            max_queue_delay_s=(
                config.max_queue_delay_ms
                if config.max_queue_delay_ms is not None
                else self.settings.max_queue_delay_ms
            )
            / 1000,
            max_queue_size=self._queue_size(max_batch, instances),
        )
        shape = (3, spec.crop_size, spec.crop_size)
        entry.batcher = Batcher(entry.name, runner, batcher_config, observer=self.metrics, item_shape=shape)
        entry.batcher.start()
        entry.preprocess = PreprocessSpec.from_model_spec(spec)
        entry.backend = create_backend(self.settings, entry.preprocess, runner.provider, entry.name)
        entry.load_seconds = seconds
        entry.config = record.config
        entry.loaded_at = time.time()
        entry.state = ModelState.READY
        self.metrics.model_loaded(entry.name, version_label, "success", seconds)
        self.metrics.set_model_memory(entry.name, version_label, entry.memory_bytes)
        log.info(
            "event=model_ready model=%s version=%s provider=%s resolution=%d weights=%s seconds=%.2f "
            "memory_mb=%.1f reason=%s",
            entry.name, entry.version, runner.provider, spec.crop_size, spec.weights.kind, seconds,
            entry.memory_bytes / 2**20, reason,
        )  # fmt: skip

    def _queue_size(self, max_batch: int, instances: int) -> int:
        """The configured queue size; left at its default, at least one full batch per instance and one
        more waiting, since a shorter queue could never fill the batches (CUDA batches reach 256)."""
        if "max_queue_size" in self.settings.model_fields_set:
            return self.settings.max_queue_size
        return max(self.settings.max_queue_size, max_batch * (instances + 1))

    def _load_cascade(self, record: ModelRecord) -> None:
        """A cascade loads nothing itself: check that its stages are models of the repository that share
        one label set, and take the last stage's metadata (its output is what a cascade answers)."""
        assert record.cascade is not None
        entry = record.versions[1]
        labels: list[str] | None = None
        spec: ModelSpec | None = None
        problems: list[str] = []
        first = record.cascade.stages[0].model
        for stage in record.cascade.stages:
            stage_record = self.records.get(stage.model)
            if stage_record is None or not stage_record.on_disk:
                problems.append(f"stage '{stage.model}' is not a model of the repository")
                continue
            if stage_record.is_cascade_folder:
                problems.append(f"stage '{stage.model}' is itself a cascade")
                continue
            target = stage_record.serving() or self._target_newest(stage_record)
            if target is None or target.spec is None or target.path is None:
                problems.append(f"stage '{stage.model}' has no usable version")
                continue
            try:
                stage_labels = target.labels or read_labels(
                    target.path / LABELS_FILE, target.spec.num_classes
                )
            except (OSError, ValueError) as exc:
                problems.append(f"stage '{stage.model}': {exc}")
                continue
            if labels is not None and stage_labels != labels:
                problems.append(f"stage '{stage.model}' has another label set than '{first}'")
            labels, spec = labels or stage_labels, target.spec
        if problems or spec is None or labels is None:
            entry.fail("; ".join(problems) or "no stages")
            self.metrics.model_loaded(record.name, "1", "failed", None)
            self._publish_ready(record)
            raise LoadFailed(f"failed to load '{record.name}': {entry.reason}")
        entry.spec, entry.labels, entry.reason = spec, labels, None
        entry.state, entry.loaded_at = ModelState.READY, time.time()
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

    def _load_blocking(
        self, record: ModelRecord, entry: ModelEntry
    ) -> tuple[OrtRunner, ModelSpec, list[str]]:
        assert entry.path is not None and entry.version is not None
        spec, labels = validate_files(entry.path, entry.name, entry.version, self.hashes)
        runner = OrtRunner(entry.path / MODEL_FILE, RuntimeOptions.from_settings(self.settings), OUTPUT_NAMES)
        batch = record.config.max_batch_size or self.settings.batch_size_for(runner.provider, spec.gmacs)
        runner.warm_up(
            (3, spec.crop_size, spec.crop_size), warmup_batch_sizes(batch), self.settings.warmup_runs
        )
        return runner, spec, labels

    async def unload(self, name: str, reason: str = "api") -> None:
        """Stop new requests to every version of `name` now; let what they hold finish; release."""
        record = self.record(name)
        async with record.lock:
            await self._unload_locked(record, reason, wanted=reason == "evicted")

    async def _unload_locked(self, record: ModelRecord, reason: str, wanted: bool) -> None:
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
            await asyncio.wait_for(entry._idle.wait(), timeout=self.settings.drain_timeout_s)
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

    # ---------------------------------------------------------------------------------------- budget
    def _estimate(self, record: ModelRecord, entry: ModelEntry) -> int:
        if record.measured_bytes:
            return record.measured_bytes
        assert entry.path is not None
        try:
            size = (entry.path / MODEL_FILE).stat().st_size
        except OSError:
            size = 0
        return int(size * _ESTIMATE_FACTOR) + _ESTIMATE_BASE

    def memory_in_use(self) -> int:
        return sum(e.memory_bytes or 0 for r in self.records.values() for e in r.loaded())

    async def _make_room(self, needed: int, exclude: ModelRecord) -> None:
        """Unload least recently used idle models until `needed` more bytes fit the budget.
        Raises Overloaded when the models holding memory are all in use (or it can never fit)."""
        budget = self.budget_bytes
        if needed > budget:
            raise Overloaded(
                f"model '{exclude.name}' needs about {needed >> 20} MB, more than the whole memory budget "
                f"of {budget >> 20} MB",
                retry_after=60.0,
            )
        while self.memory_in_use() + needed > budget:
            idle = [
                r for r in self.records.values()
                if r is not exclude and r.loaded() and not r.busy() and not r.lock.locked()
            ]  # fmt: skip
            if not idle:
                raise Overloaded(
                    f"no room to load model '{exclude.name}' (about {needed >> 20} MB): the memory budget "
                    f"of {budget >> 20} MB is held by models with requests in flight",
                    retry_after=1.0,
                )
            victim = min(idle, key=lambda r: r.last_used)
            log.info("event=evict model=%s to_load=%s", victim.name, exclude.name)
            async with victim.lock:
                await self._unload_locked(victim, "evicted", wanted=True)

    # -------------------------------------------------------------------------------------- polling
    async def rescan(self, only: str | None = None) -> None:
        """Pick up models that appeared on disk since start (as not wanted until loaded)."""
        on_disk = await asyncio.to_thread(scan, self.settings.repository)
        for name, model in on_disk.items():
            if (only is None or name == only) and name not in self.records:
                self._add(model, wanted=False)
                self.metrics.set_ready(name, False)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=poll_failed")

    async def poll_once(self) -> None:
        """Load new models and changed versions; unload models removed from the repository."""
        on_disk = await asyncio.to_thread(scan, self.settings.repository)
        for name, model in on_disk.items():
            record = self.records.get(name)
            if record is None:
                record = self._add(model, wanted=True)
                self.metrics.set_ready(name, False)
            if not record.wanted or (self.lazy and record.serving() is None):
                self._sync_versions(record, model)
                continue
            if self._changed(record, model):
                with contextlib.suppress(LoadFailed, Overloaded):
                    await self.load(name, reason="poll")
        for name, record in self.records.items():
            if name not in on_disk and record.on_disk and record.path is not None:
                record.on_disk = False
                record.reason = f"model '{name}' was removed from the repository"
                async with record.lock:
                    await self._unload_locked(record, "poll", wanted=False)

    @staticmethod
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
        return any(e.ready and n not in targets for n, e in record.versions.items())

    # ---------------------------------------------------------------------------------------- views
    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        for name in sorted(self.records):
            record = self.records[name]
            if not record.touched:
                if not ready_only:
                    rows.append(IndexEntry(name))
                continue
            if not record.versions and not ready_only:
                rows.append(IndexEntry(name, "", "UNAVAILABLE", record.reason or ""))
            for number in sorted(record.versions):
                entry = record.versions[number]
                if ready_only and not entry.ready:
                    continue
                if entry.state is ModelState.AVAILABLE and not ready_only:
                    rows.append(IndexEntry(name, str(number), "UNAVAILABLE", entry.reason or "not loaded"))
                    continue
                reason = entry.reason or ("" if entry.ready else entry.state.value)
                rows.append(IndexEntry(name, str(number), entry.state.triton, reason))
        return rows

    def required_ready(self) -> bool:
        return all(r.serving() is not None for r in self.records.values() if r.required)

    def readiness(self) -> dict[str, str]:
        table = {}
        for name, record in self.records.items():
            serving = record.serving()
            if serving is not None:
                table[name] = "ready"
            elif record.reason:
                table[name] = f"failed: {record.reason}"
            else:
                newest = record.newest()
                state = newest.state.value if newest is not None else "failed"
                reason = newest.reason if newest is not None and newest.reason else None
                table[name] = state if reason is None or reason == state else f"{state}: {reason}"
        return table


def _graph_size(record: ModelRecord) -> int:
    newest = record.newest()
    try:
        return (newest.path / MODEL_FILE).stat().st_size if newest and newest.path else 0
    except OSError:
        return 0
