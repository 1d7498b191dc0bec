"""What a front answers from the engine's published state alone (state.py): names, records, versions,
listings. A mixin of `RemoteEngine` (remote.py), which keeps `_state` and `_catalogue` up to date."""

from __future__ import annotations

from collections.abc import Mapping

from service.core.admission import Admission
from service.errors import NotReady, UnknownModel
from service.lifecycle.records import IndexEntry, ModelEntry, ModelRecord
from service.names import unknown_name_message
from service.schemas import ModelInfo, ModelList
from service.split.state import EngineState, FrontCatalogue

ENGINE_AWAY = "the engine is not available (starting or restarting)"


class PublishedViews:
    _state: EngineState | None
    _catalogue: FrontCatalogue | None

    def _admission_now(self) -> Admission:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- models
    # Triton's system shared memory is not offered by a front: the other fronts would not know a region.
    shared_memory = None

    def canonical(self, name: str) -> str | None:
        return self._admission_now().canonical(name)

    def model_records(self) -> Mapping[str, ModelRecord]:
        """The engine's records as last published (no batchers or sessions here)."""
        self._admission_now()
        assert self._catalogue is not None
        return self._catalogue.records

    def lookup(self, name: str) -> ModelRecord:
        admission = self._admission_now()
        canonical = admission.canonical(name)
        assert self._catalogue is not None
        record = self._catalogue.records.get(canonical) if canonical else None
        if record is None:
            raise UnknownModel(unknown_name_message(name, self._catalogue.records))
        return record

    def ready_version(self, name: str, version: int | None = None) -> ModelEntry:
        record = self.lookup(name)
        assert self._catalogue is not None
        entry = self._catalogue.leases.pick(record, version)
        if entry is None:
            raise NotReady(f"model '{record.name}' is not loaded yet; it loads on its first request")
        return entry

    def describe(self, record: ModelRecord) -> ModelInfo:
        for info in self.model_list().models:
            if info.name == record.name:
                return info
        raise UnknownModel(f"model '{record.name}' is no longer known")

    def model_list(self) -> ModelList:
        if self._state is None:
            raise NotReady(ENGINE_AWAY)
        return self._state.models

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        if self._state is None:
            raise NotReady(ENGINE_AWAY)
        return [row for row in self._state.index if not ready_only or row.state == "READY"]
