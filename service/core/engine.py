"""The engine: the one core that every protocol calls.

A request goes `admit` (core/admission.py: one `Target`, decided once, carried by an `AdmittedCall`)
-> `classify` / `infer_images` / `infer_pixels`, which hand the target to the router (`auto`, cascades;
core/routing.py) or straight to the executor (one model run; core/executor.py). The engine also wires
the pieces together, answers state questions (ready, draining, which models) and passes model control
to the lifecycle. Protocol layers map the `ServiceError`s raised here to their status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np

from service.core.admission import Admission
from service.core.cache import ResponseCache
from service.core.cache.keys import output_options
from service.core.call import AdmittedCall
from service.core.describe import describe_model
from service.core.executor import Executor, RunOptions
from service.core.image_requests import ImageRequests
from service.core.live import LiveFigures
from service.core.outcomes import InferOutcome
from service.core.routing import Router, auto_candidates
from service.core.shared_memory import SharedMemoryRegions
from service.core.target import AUTO, Target
from service.errors import InvalidArgument, NotReady, UnknownModel
from service.lifecycle.files import ModelLoadError
from service.lifecycle.manager import Lifecycle
from service.lifecycle.polling import Poller
from service.lifecycle.records import IndexEntry, ModelEntry, ModelRecord
from service.lifecycle.views import readiness, repository_index
from service.metrics import Metrics
from service.names import unknown_name_message
from service.preprocess.formats import DecodeLimits
from service.preprocess.images import configure_pillow
from service.preprocess.pool import PreprocessPool
from service.runtime.outputs import NOTHING, Wanted
from service.runtime.priorities import DEFAULT, Priority
from service.schemas import ModelInfo, ModelList
from service.settings import Settings

log = logging.getLogger(__name__)


class Engine(ImageRequests):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.lifecycle = Lifecycle(settings, metrics)
        self.pool = PreprocessPool(
            settings.effective_preprocess_workers,
            settings.max_pending_preprocess,
            aging_s=settings.priority_aging_ms / 1000,
            high_lane=settings.high_priority_lane,
        )
        self.live = LiveFigures()
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self.cache = ResponseCache(settings, metrics)
        self.executor = Executor(
            self.lifecycle.leases, self.pool, self.limits, metrics, self.live, self.cache
        )
        self.router = Router(self.executor, self.lifecycle, self.pool, self.live, settings, metrics)
        self.admission = Admission(self.lifecycle, settings)
        self.poller = Poller(self.lifecycle, settings) if settings.model_control == "poll" else None
        self.shared_memory = SharedMemoryRegions()  # Triton's system shared memory extension
        self._accepting = False
        self._draining = False
        self._stopped = False

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Discover models and begin loading them in the background; `wait_loaded` waits for that."""
        configure_pillow()
        backend = self.cache.backend.name if self.cache.backend is not None else "off"
        log.info("event=response_cache backend=%s (models opt in with config.json response_cache)", backend)
        await self.lifecycle.start()
        if not self.lifecycle.records:
            log.warning("event=no_models repository=%s", self.settings.repository)
        if self.settings.default_model and self.settings.default_model not in self.lifecycle.records:
            await self.lifecycle.stop()
            raise ModelLoadError(f"default model '{self.settings.default_model}' is not configured")
        if self.poller is not None:
            self.poller.start()
        self._accepting = True

    async def wait_loaded(self) -> None:
        """Wait until the start-up loads are done; with `strict`, raise if any failed."""
        await self.lifecycle.wait_started()
        if self.settings.strict:
            records = self.lifecycle.records
            failed = {
                name: state for name, state in self.readiness().items()
                if records[name].required and state != "ready"
            }  # fmt: skip
            if failed or not records:
                raise ModelLoadError(f"strict mode: models not ready: {failed or 'none configured'}")

    async def wait_connected(self) -> None:
        """In this process: at once."""

    def begin_drain(self) -> None:
        """Shutting down: report not ready (so balancers move on) but finish requests in flight."""
        self._draining = True

    async def stop(self) -> None:
        """Stop accepting, let queued work finish (bounded by drain_timeout_s), release everything.
        Stopping again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        if self.poller is not None:
            await self.poller.stop()
        await self.lifecycle.stop()
        self.pool.close()
        await self.cache.close()
        self.shared_memory.close_all()

    # ------------------------------------------------------------------ state
    @property
    def draining(self) -> bool:
        return self._draining or not self._accepting

    @property
    def ready(self) -> bool:
        lifecycle = self.lifecycle
        return (
            not self.draining and lifecycle.started and bool(lifecycle.records) and lifecycle.required_ready()
        )

    def readiness(self) -> dict[str, str]:
        return readiness(self.lifecycle.records)

    @property
    def default_model(self) -> str | None:
        return self.admission.default_model

    def label(self, name: str | None) -> str:
        """The metrics label of a request for `name` before (or without) its admission."""
        return self.admission.label(name)

    async def render_metrics(self) -> bytes:
        return self.metrics.render()

    def serving(self, name: str) -> bool | None:
        """Whether the model called exactly `name` serves now (None: no such model)."""
        record = self.lifecycle.records.get(name)
        return None if record is None else record.serving() is not None and not self.draining

    # ------------------------------------------------------------------ requests
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
        """Decide once what serves a request (core/admission.py). Cheap: call it before reading a body.
        While draining, requests the protocols let in (already in flight at the signal) still run.
        The call refines itself with the options a body carries (`AdmittedCall.refine`)."""
        if not self._accepting:
            raise NotReady("server is shutting down")
        target = self.admission.admit(model, version, top_k=top_k, budget_ms=budget_ms, priority=priority)
        return AdmittedCall(target, request_id, deadline, self.admission.refine)

    async def infer_images(
        self, call: AdmittedCall, images: Sequence[bytes], wanted: Wanted = NOTHING
    ) -> InferOutcome:
        """Encoded images -> the router (`auto`, cascades) or the executor (one model)."""
        self._check_count(len(images))
        target = call.target
        deadline = self._deadline(call.deadline)
        run = self._run_options(target, wanted)
        if target.routed:
            return await self.router.run(target, images, deadline, run)
        assert target.record is not None
        return await self.executor.run_images(target.record, target.version, images, deadline, run)

    async def infer_pixels(
        self, call: AdmittedCall, pixels: np.ndarray, wanted: Wanted = NOTHING
    ) -> InferOutcome:
        """Already-preprocessed uint8 (N, 3, S, S) at the model's crop size -> the executor."""
        target = call.target
        if target.routed:
            raise InvalidArgument(
                f"'{target.name}' runs models of several resolutions: send encoded images, not pixels"
            )
        assert target.record is not None and target.spec is not None
        size = target.spec.crop_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise InvalidArgument(
                f"model '{target.name}' takes uint8 pixels of shape [N, 3, {size}, {size}], "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        self._check_count(pixels.shape[0])
        run = self._run_options(target, wanted)
        return await self.executor.run_pixels(
            target.record, target.version, pixels, self._deadline(call.deadline), run
        )

    @staticmethod
    def _run_options(target: Target, wanted: Wanted = NOTHING) -> RunOptions:
        # Extra outputs (features, maps) are not cached: the cache holds classification rows only.
        return RunOptions(target.priority, None if wanted.any else output_options(target), wanted)

    def _deadline(self, deadline: float | None) -> float:
        """The request's own deadline, else `request_timeout_s` from now."""
        return deadline or time.monotonic() + self.settings.request_timeout_s

    # ------------------------------------------------------------------ models
    def canonical(self, name: str) -> str | None:
        """The served name `name` refers to (case forgiven, `auto` included); None when unknown."""
        return self.admission.canonical(name)

    def model_records(self) -> Mapping[str, ModelRecord]:
        """Every model and cascade of the repository, by name, in whatever state."""
        return self.lifecycle.records

    def lookup(self, name: str) -> ModelRecord:
        """The model or cascade called `name` (case forgiven), in whatever state. Raises UnknownModel."""
        canonical = self.admission.canonical(name)
        record = self.lifecycle.records.get(canonical) if canonical else None
        if record is None:
            raise UnknownModel(unknown_name_message(name, self.lifecycle.records))
        return record

    def ready_version(self, name: str, version: int | None = None) -> ModelEntry:
        """The ready version of model `name` (newest when `version` is None), for metadata and
        readiness questions. Raises UnknownModel / NotReady."""
        if not self._accepting:
            raise NotReady("server is shutting down")
        record = self.lookup(name)
        entry = self.lifecycle.leases.pick(record, version)
        if entry is None:
            raise NotReady(f"model '{record.name}' is not loaded yet; it loads on its first request")
        return entry

    def describe(self, record: ModelRecord) -> ModelInfo:
        return describe_model(record, default=record.name == self.default_model)

    def model_list(self) -> ModelList:
        policies = [AUTO] if auto_candidates(self.lifecycle.records.values()) else []
        default = self.default_model
        models = [describe_model(r, default=r.name == default) for r in self.lifecycle.records.values()]
        return ModelList(default_model=default, models=models, policies=policies)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return repository_index(self.lifecycle.records, ready_only)

    # ------------------------------------------------------------------ model control
    async def load_model(self, name: str) -> None:
        self._check_control("load")
        await self.lifecycle.load(name, reason="api")

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Unload `name`; with `unload_dependents`, also the cascades that use it as a stage."""
        self._check_control("unload")
        self.lifecycle.record(name)
        if unload_dependents:
            for cascade in self.lifecycle.dependents(name):
                await self.lifecycle.unload(cascade, reason="api")
        await self.lifecycle.unload(name, reason="api")

    def _check_control(self, action: str) -> None:
        mode = self.settings.model_control
        if mode != "explicit":
            raise NotReady(
                f"cannot {action} models through the API in model control mode '{mode}'; "
                "start the server with --model-control explicit",
                retry_after=60.0,
            )
        if self.draining:
            raise NotReady("server is shutting down")
