"""The engine's state as the fronts see it: its model records without their sessions, readiness, the
listings. The engine publishes a new one when anything a front decides with changes (`signature`);
a front rebuilds plain `ModelRecord`s from it, so the one `Admission` (core/admission.py) admits there
as it does in one process, and metadata answers come from the same records."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.engine import Engine
from service.lifecycle.configs import CascadeSpec, ModelConfig
from service.lifecycle.leases import Leases
from service.lifecycle.records import IndexEntry, ModelEntry, ModelRecord, ModelState
from service.model_spec import ModelSpec
from service.schemas import ModelList


@dataclass(frozen=True)
class VersionView:
    version: int | None
    state: str
    reason: str | None
    spec: ModelSpec | None
    labels: list[str]
    provider: str | None
    kind: str
    backend: str | None = None  # how the engine decodes and resizes this version's photos


@dataclass(frozen=True)
class RecordView:
    name: str
    config: ModelConfig
    is_cascade_folder: bool
    cascade: CascadeSpec | None
    wanted: bool
    required: bool
    on_disk: bool
    reason: str | None
    versions: tuple[VersionView, ...]


@dataclass(frozen=True)
class EngineState:
    ready: bool
    draining: bool
    lazy: bool
    readiness: dict[str, str]
    records: tuple[RecordView, ...]
    models: ModelList
    index: tuple[IndexEntry, ...]


def signature(engine: Engine) -> tuple[object, ...]:
    """What changes when a front must learn the new state: readiness, and every version's state."""
    return (
        engine.ready,
        engine.draining,
        tuple(
            (r.name, r.wanted, r.reason, tuple((v, e.state, e.reason) for v, e in r.versions.items()))
            for r in engine.lifecycle.records.values()
        ),
    )


def capture(engine: Engine) -> EngineState:
    records = tuple(
        RecordView(
            r.name, r.config, r.is_cascade_folder, r.cascade, r.wanted, r.required, r.on_disk, r.reason,
            tuple(
                VersionView(
                    e.version, e.state.value, e.reason, e.spec, e.labels, e.provider, e.kind,
                    e.backend.name if e.backend is not None else None,
                )
                for e in r.versions.values()
            ),
        )
        for r in engine.lifecycle.records.values()
    )  # fmt: skip
    return EngineState(
        engine.ready,
        engine.draining,
        engine.lifecycle.lazy,
        engine.readiness(),
        records,
        engine.model_list(),
        tuple(engine.repository_index()),
    )


@dataclass
class FrontCatalogue:
    """What `Admission` reads (core/admission.py's Catalogue), rebuilt from the engine's state: records
    with metadata and states but no sessions (queue room is the engine's to check)."""

    state: EngineState
    records: dict[str, ModelRecord] = field(init=False)
    leases: Leases = field(init=False)

    def __post_init__(self) -> None:
        self.records = {view.name: _record(view) for view in self.state.records}
        self.leases = Leases(lambda record: self.state.lazy and record.wanted, _no_load)
        self._backends = {(r.name, v.version): v.backend for r in self.state.records for v in r.versions}

    def decodes_here(self, name: str, version: int | None) -> bool:
        """Whether a front decodes this model's photos (Pillow, as the engine would: the same pixels).
        Where the engine decodes on the GPU (nvImageCodec) or resizes with its graph, the photos cross
        as bytes, so that the engine's decoder batches them across every front."""
        record = self.records.get(name)
        entry = None
        if record is not None:
            entry = record.serving() if version is None else record.versions.get(version)
            entry = entry or record.target_newest()  # not loaded yet (lazy): the version it will load
        backend = self._backends.get((name, entry.version)) if entry is not None else None
        return backend in (None, "pillow")

    @property
    def lazy(self) -> bool:
        return self.state.lazy


async def _no_load(name: str, reason: str) -> None:  # a front never loads: the engine does, on its side
    return None


def _record(view: RecordView) -> ModelRecord:
    record = ModelRecord(
        view.name,
        None,
        config=view.config,
        wanted=view.wanted,
        required=view.required,
        on_disk=view.on_disk,
        reason=view.reason,
        cascade=view.cascade,
        is_cascade_folder=view.is_cascade_folder,
    )
    for v in view.versions:
        entry = ModelEntry(
            view.name, v.version, None, ModelState(v.state), v.reason, v.spec, list(v.labels), v.provider
        )
        entry.kind = v.kind
        if v.version is not None:
            record.versions[v.version] = entry
    return record
