"""Admission: every request, whatever its protocol, becomes one `Target` here, once.

`admit` resolves the name (case forgiven, the default model for none, `auto`, a cascade, the fp16 graph
a bare name means on CUDA), the version, checks readiness and that the model's queue has room, and
checks the options known so far. A model whose answers may be cached skips the queue check here: a hit
needs no slot, and the executor checks room for the misses once the cache has been asked. Protocols
call it before they read a request body where the protocol allows (the name is in the URL or the
query); V2, whose options travel in the body, calls `refine` on the admitted target once the body is
parsed. Nothing after admission resolves a name again.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from service.core.executor import check_queue_room
from service.core.precision import FP16_SUFFIX, resolve_precision
from service.core.routing import NO_AUTO_CANDIDATE, auto_candidates
from service.core.target import AUTO, Target
from service.errors import InvalidArgument, NotReady, UnknownModel
from service.lifecycle.leases import Leases
from service.lifecycle.records import ModelEntry, ModelRecord
from service.lifecycle.views import why_not_ready
from service.names import match_name, unknown_name_message
from service.runtime.priorities import DEFAULT, Priority
from service.settings import Settings

MAX_BUDGET_MS = 600_000


class Catalogue(Protocol):
    """What admission reads: the lifecycle, or a split-mode front's copy of its records."""

    @property
    def records(self) -> dict[str, ModelRecord]: ...
    @property
    def lazy(self) -> bool: ...
    @property
    def leases(self) -> Leases: ...


class Admission:
    def __init__(self, lifecycle: Catalogue, settings: Settings) -> None:
        self._lifecycle = lifecycle
        self._settings = settings

    # ---------------------------------------------------------------------------------------- names
    def canonical(self, name: str) -> str | None:
        """The served name `name` refers to, ignoring case (`B5` is b5); None when it is unknown."""
        records = self._lifecycle.records
        if name == AUTO or name in records:  # the usual case, without building a list
            return name
        return match_name(name, [AUTO, *records])

    @property
    def default_model(self) -> str | None:
        """The configured default, else the first ready model with real (non-random) weights (with a
        memory budget, the first servable one by its model.json, loaded or not)."""
        if self._settings.default_model:
            return self._settings.default_model
        lifecycle = self._lifecycle
        candidates = []
        for record in lifecycle.records.values():
            entry = record.serving()
            if entry is None and lifecycle.lazy and record.wanted and record.on_disk:
                entry = record.newest()
            if entry is not None and entry.spec is not None:
                candidates.append((record.name, entry.spec.weights.kind))
        real = [name for name, kind in candidates if kind != "random"]
        chosen = real or [name for name, _ in candidates]
        return chosen[0] if chosen else None

    def label(self, name: str | None) -> str:
        """The metrics label of a request for `name` that was not admitted: a bounded set of values."""
        if not name:
            return self.default_model or "unknown"
        return self.canonical(name) or "unknown"

    # ------------------------------------------------------------------------------------ admission
    def admit(
        self,
        name: str | None,
        version: int | None = None,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority = DEFAULT,
    ) -> Target:
        """The one decision of what serves a request. Raises UnknownModel, NotReady, InvalidArgument,
        Overloaded (the model's queue is full for this priority: refused before the body is read, unless
        the model's answers may be cached)."""
        if not name:
            name = self.default_model
            if name is None:
                raise NotReady("no model is ready yet")
        canonical = self.canonical(name)
        if canonical is None:
            raise UnknownModel(unknown_name_message(name, self._lifecycle.records))
        if canonical == AUTO:
            target = self._auto(version)
        else:
            record = self._lifecycle.records[canonical]
            if record.is_cascade_folder:
                target = self._cascade(record, version, priority)
            else:
                target = self._model(record, version, priority)
        return self.refine(target, top_k=top_k, budget_ms=budget_ms, priority=priority)

    def refine(
        self,
        target: Target,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority | None = None,
    ) -> Target:
        """`target` with the request's options, checked against it (for protocols that learn them late;
        a priority of None keeps the target's)."""
        if budget_ms is not None and target.kind != "auto":
            raise InvalidArgument(f"budget_ms applies to '{AUTO}', not to the {target.kind} '{target.name}'")
        if target.kind == "auto":
            budget_ms = self._settings.auto_budget_ms if budget_ms is None else budget_ms
            if not 0 < budget_ms <= MAX_BUDGET_MS:
                raise InvalidArgument(f"budget_ms must be between 0 and {MAX_BUDGET_MS}, got {budget_ms:g}")
        if top_k is not None:
            upper = min(self._classes(target), self._settings.max_top_k)
            if not 1 <= top_k <= upper:
                raise InvalidArgument(f"top_k must be between 1 and {upper}, got {top_k}")
        priority = target.priority if priority is None else priority
        return dataclasses.replace(target, top_k=top_k, budget_ms=budget_ms, priority=priority)

    def _auto(self, version: int | None) -> Target:
        if version is not None:
            raise InvalidArgument(f"'{AUTO}' has no versions; leave the version out")
        return Target(AUTO, "auto", None)

    def _cascade(self, record: ModelRecord, version: int | None, priority: Priority) -> Target:
        if version is not None:
            raise InvalidArgument(f"'{record.name}' has no versions; leave the version out")
        entry = record.versions.get(1)
        if entry is None or not entry.ready or record.cascade is None:
            raise NotReady(why_not_ready(record))
        first = self._lifecycle.records.get(record.cascade.stages[0].model)
        serving = first.serving() if first is not None else None
        if serving is not None and not self._may_be_cached(serving):
            check_queue_room(serving, 1, priority)
        return Target(record.name, "cascade", record, spec=entry.spec)

    def _model(self, record: ModelRecord, version: int | None, priority: Priority) -> Target:
        if version is None and self._settings.precision != "fp32":
            record = self._precision_choice(record)
        entry = self._lifecycle.leases.hint(record, version)
        if not self._may_be_cached(entry):
            check_queue_room(entry, 1, priority)
        return Target(record.name, "model", record, version, spec=entry.spec)

    def _may_be_cached(self, entry: ModelEntry) -> bool:
        """Whether the response cache may hold this version's answers (the executor asks it first)."""
        settings = self._settings
        cache_on = bool(settings.cache_url) or settings.cache_size_mb > 0
        return cache_on and entry.config is not None and entry.config.response_cache

    def _precision_choice(self, record: ModelRecord) -> ModelRecord:
        """b0 -> b0-fp16 where that pays (service/core/precision.py): only that one candidate is
        looked at, since this runs on every request."""
        fp16 = self._lifecycle.records.get(record.name + FP16_SUFFIX)
        entry = fp16.serving() if fp16 is not None else None
        if fp16 is None or entry is None:
            return record
        chosen = resolve_precision(record.name, self._settings.precision, {fp16.name: entry})
        return fp16 if chosen == fp16.name else record

    def _classes(self, target: Target) -> int:
        if target.spec is not None:
            return target.spec.num_classes
        candidates = auto_candidates(self._lifecycle.records.values())
        if not candidates:
            raise NotReady(NO_AUTO_CANDIDATE)
        return min(entry.spec.num_classes for _, entry in candidates if entry.spec is not None)
