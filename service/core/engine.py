"""The core that HTTP and gRPC both call: model registry, preprocessing pool, batchers.

`classify(model, images, top_k, deadline)` and `infer_*` are the only ways in; protocol layers map
the `ServiceError`s raised here to status codes through `service.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.core.describe import describe_model
from service.core.names import match_name, unknown_name_message
from service.core.precision import FP16_SUFFIX, resolve_precision
from service.core.routing import AUTO, Router
from service.errors import InvalidArgument, NotReady, Overloaded, ServiceError, UnknownModel
from service.lifecycle.manager import Lifecycle
from service.lifecycle.records import IndexEntry, ModelEntry, ModelRecord
from service.lifecycle.repository import ModelLoadError
from service.metrics import Metrics
from service.preprocess.images import DecodedImage, DecodeLimits, configure_pillow, decode, resize_crop
from service.runtime.batcher import ItemResult
from service.schemas import ModelInfo, ModelList, Prediction, Route, Timings
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class InferOutcome:
    """Raw outputs, one row per image, plus where the time went."""

    model: ModelEntry
    outputs: dict[str, np.ndarray]
    timings: Timings
    route: Route | None = None  # set by `auto` and cascades


@dataclass
class ClassifyOutcome:
    model: ModelEntry
    predictions: list[list[Prediction]]
    timings: Timings
    route: Route | None = None


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self.lifecycle = Lifecycle(settings, metrics)
        self.router = Router(self, settings, metrics)
        self._pool: ThreadPoolExecutor | None = None
        self._pending_preprocess = 0
        self._accepting = False
        self._draining = False

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Discover models and begin loading them in the background; `wait_loaded` waits for that."""
        configure_pillow()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.effective_preprocess_workers, thread_name_prefix="preprocess"
        )
        await self.lifecycle.start()
        if not self.lifecycle.records:
            log.warning("event=no_models repository=%s", self.settings.repository)
        if self.settings.default_model and self.settings.default_model not in self.lifecycle.records:
            await self.lifecycle.stop()
            raise ModelLoadError(f"default model '{self.settings.default_model}' is not configured")
        self._accepting = True

    async def wait_loaded(self) -> None:
        """Wait until the start-up loads are done; with `strict`, raise if any failed."""
        await self.lifecycle.wait_started()
        if self.settings.strict:
            failed = {
                name: state for name, state in self.readiness().items()
                if self.lifecycle.records[name].required and state != "ready"
            }  # fmt: skip
            if failed or not self.lifecycle.records:
                raise ModelLoadError(f"strict mode: models not ready: {failed or 'none configured'}")

    def begin_drain(self) -> None:
        """Shutting down: report not ready (so balancers move on) but finish requests in flight."""
        self._draining = True

    async def stop(self) -> None:
        """Stop accepting, let queued work finish (bounded by drain_timeout_s), release everything."""
        self._accepting = False
        await self.lifecycle.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ state
    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def draining(self) -> bool:
        return self._draining or not self._accepting

    @property
    def ready(self) -> bool:
        return (
            self._accepting
            and not self._draining
            and self.lifecycle.started
            and bool(self.lifecycle.records)
            and self.lifecycle.required_ready()
        )

    def readiness(self) -> dict[str, str]:
        return self.lifecycle.readiness()

    @property
    def preprocess_backlog(self) -> int:
        """Images being decoded or waiting for a decode thread, across all models."""
        return self._pending_preprocess

    def canonical(self, name: str) -> str | None:
        """The served name `name` refers to, ignoring case (`B5` is b5); None when it is unknown."""
        if name == AUTO or name in self.lifecycle.records:  # the usual case, without building a list
            return name
        return match_name(name, [AUTO, *self.lifecycle.records])

    def knows(self, name: str) -> bool:
        return self.canonical(name) is not None

    @property
    def default_model(self) -> str | None:
        """The configured default, else the first ready model with real (non-random) weights (with a
        memory budget, the first servable one by its model.json, loaded or not)."""
        if self.settings.default_model:
            return self.settings.default_model
        candidates = []
        for record in self.lifecycle.records.values():
            entry = record.serving()
            if entry is None and self.lifecycle.lazy and record.wanted and record.on_disk:
                entry = record.newest()
            if entry is not None and entry.spec is not None:
                candidates.append(entry.spec)
        real = [spec for spec in candidates if spec.weights.kind != "random"]
        chosen = real or candidates
        return chosen[0].name if chosen else None

    def _name(self, name: str | None) -> str:
        if not self._accepting:
            raise NotReady("server is shutting down")
        if name is None or name == "":
            default = self.default_model
            if default is None:
                raise NotReady("no model is ready yet")
            name = default
        canonical = self.canonical(name)
        if canonical is None:
            raise UnknownModel(unknown_name_message(name, self.lifecycle.records))
        name = canonical
        if self.settings.precision == "fp32" or name == AUTO:
            return name
        # b0 -> b0-fp16 on CUDA: only that one candidate is looked at (this runs on every request).
        fp16 = self.lifecycle.records.get(name + FP16_SUFFIX)
        entry = fp16.serving() if fp16 is not None else None
        candidates = {fp16.name: entry} if fp16 is not None and entry is not None else {}
        return resolve_precision(name, self.settings.precision, candidates)

    def lookup(self, name: str) -> ModelRecord:
        """The model called `name`, in whatever state. Raises UnknownModel."""
        return self.lifecycle.record(self.canonical(name) or name)

    def resolve(self, name: str | None, version: int | None = None) -> ModelEntry:
        """The ready version of `name` (None: the default model; no version: the newest ready one).
        Raises UnknownModel / NotReady."""
        name = self._name(name)
        entry = self.lifecycle.pick(name, version)
        if entry is None:
            raise NotReady(f"model '{name}' is not loaded yet; it loads on its first request")
        return entry

    def peek(self, name: str | None, version: int | None = None) -> ModelEntry:
        """What a request for `name` would run, loaded or not (a memory budget loads it on first use):
        for the checks a protocol layer makes before reading a body. Raises UnknownModel / NotReady."""
        name = self._name(name)
        if self._routed(name, version):
            return self.router.hint(name)
        return self.lifecycle.hint(name, version)

    def _routed(self, name: str, version: int | None) -> bool:
        """Whether `name` is `auto` or a cascade, served by the router (which has no versions)."""
        if not self.router.handles(name):
            return False
        if version is not None:
            raise InvalidArgument(f"'{name}' has no versions; leave the version out")
        return True

    def describe(self, record: ModelRecord) -> ModelInfo:
        return describe_model(record, default=record.name == self.default_model)

    def model_list(self) -> ModelList:
        policies = [AUTO] if self.router.auto_available() else []
        return ModelList(default_model=self.default_model, models=self.describe_all(), policies=policies)

    def describe_all(self) -> list[ModelInfo]:
        default = self.default_model
        return [describe_model(r, default=r.name == default) for r in self.lifecycle.records.values()]

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
        if not self._accepting or self._draining:
            raise NotReady("server is shutting down")

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.lifecycle.index(ready_only)

    # ------------------------------------------------------------------ requests
    def check_top_k(self, entry: ModelEntry, top_k: int) -> int:
        assert entry.spec is not None
        upper = min(entry.spec.num_classes, self.settings.max_top_k)
        if not 1 <= top_k <= upper:
            raise InvalidArgument(f"top_k must be between 1 and {upper}, got {top_k}")
        return top_k

    async def classify(
        self,
        model: str | None,
        images: Sequence[bytes],
        top_k: int,
        deadline: float | None = None,
        version: int | None = None,
        budget_ms: float | None = None,
    ) -> ClassifyOutcome:
        name = self._name(model)
        self.check_top_k(self.peek(name, version), top_k)
        outcome = await self.infer_images(name, images, deadline, version, budget_ms)
        probabilities = outcome.outputs["probabilities"]
        predictions = [top_k_predictions(row, outcome.model.labels, top_k) for row in probabilities]
        return ClassifyOutcome(outcome.model, predictions, outcome.timings, outcome.route)

    async def infer_images(
        self,
        model: str | None,
        images: Sequence[bytes],
        deadline: float | None = None,
        version: int | None = None,
        budget_ms: float | None = None,
    ) -> InferOutcome:
        """Encoded images -> preprocess (thread pool) -> batcher; `auto` and cascades via the router."""
        start = time.monotonic()
        self._check_count(len(images))
        deadline = deadline or self._default_deadline(start)
        name = self._name(model)
        if self._routed(name, version):
            return await self.router.infer_images(name, images, deadline, budget_ms)
        if budget_ms is not None:
            raise InvalidArgument(f"budget_ms applies to '{AUTO}', not to the model '{name}'")
        entry = await self.lifecycle.acquire(name, version, deadline)
        try:
            # Reject overload before spending CPU on decoding.
            self.check_queue_room(entry, len(images))
            arrays = await self._preprocess_all(entry, images)
            preprocess_s = time.monotonic() - start
            self.router.observe_preprocess(entry.name, preprocess_s / len(images))
            assert entry.batcher is not None
            results = await entry.batcher.submit(arrays, deadline=deadline)
        finally:
            self.lifecycle.release(entry)
        self.router.observe_latency(entry.name, time.monotonic() - start)
        return InferOutcome(entry, _stack_outputs(results), _timings(results, preprocess_s, start))

    async def decode_images(self, images: Sequence[bytes], resize_size: int) -> list[DecodedImage]:
        """Decode each image once, for several models up to `resize_size` (cascades)."""
        self._check_count(len(images))
        done = await self._in_pool(decode, [(data, resize_size, self.limits) for data in images])
        return [item for item, _ in done]

    async def infer_decoded(
        self, model: str, decoded: Sequence[DecodedImage], deadline: float
    ) -> InferOutcome:
        """Already decoded images -> this model's resize and crop -> its batcher (a cascade stage)."""
        start = time.monotonic()
        entry = await self.lifecycle.acquire(model, None, deadline)
        try:
            self.check_queue_room(entry, len(decoded))
            spec = entry.preprocess
            assert spec is not None and entry.batcher is not None
            arrays = [array for array, _ in await self._in_pool(resize_crop, [(d, spec) for d in decoded])]
            preprocess_s = time.monotonic() - start
            results = await entry.batcher.submit(arrays, deadline=deadline)
        finally:
            self.lifecycle.release(entry)
        return InferOutcome(entry, _stack_outputs(results), _timings(results, preprocess_s, start))

    async def infer_pixels(
        self,
        model: str | None,
        pixels: np.ndarray,
        deadline: float | None = None,
        version: int | None = None,
    ) -> InferOutcome:
        """Already-preprocessed uint8 (N, 3, S, S) at the model's crop size -> batcher."""
        start = time.monotonic()
        name = self._name(model)
        spec = self.lifecycle.hint(name, version).spec
        assert spec is not None
        size = spec.crop_size
        expected = (3, size, size)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise InvalidArgument(
                f"model '{name}' takes uint8 pixels of shape [N, 3, {size}, {size}], "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        self._check_count(pixels.shape[0])
        deadline = deadline or self._default_deadline(start)
        entry = await self.lifecycle.acquire(name, version, deadline)
        try:
            assert entry.batcher is not None
            items = [np.ascontiguousarray(p) for p in pixels]
            results = await entry.batcher.submit(items, deadline=deadline)
        finally:
            self.lifecycle.release(entry)
        return InferOutcome(entry, _stack_outputs(results), _timings(results, 0.0, start))

    def _default_deadline(self, start: float) -> float:
        return start + self.settings.request_timeout_s

    def _check_count(self, count: int) -> None:
        if count < 1:
            raise InvalidArgument("the request holds no image")
        if count > self.settings.max_images_per_request:
            raise InvalidArgument(
                f"{count} images in one request; at most {self.settings.max_images_per_request} are accepted"
            )

    def check_queue_room(self, entry: ModelEntry, count: int = 1) -> None:
        """Raise Overloaded when `count` more images would not fit in the model's queue now. Cheap:
        protocol layers call it before reading a request body, the engine again before decoding."""
        batcher = entry.batcher
        if batcher is None:  # not loaded yet: it will be empty
            return
        if batcher.queue_depth + count > batcher.config.max_queue_size:
            raise Overloaded(
                f"model '{batcher.name}' queue is full ({batcher.queue_depth} images waiting)",
                retry_after=batcher.retry_after(count),
            )

    async def _preprocess_all(self, entry: ModelEntry, images: Sequence[bytes]) -> list[np.ndarray]:
        backend = entry.backend
        assert backend is not None
        done = await self._in_pool(backend.prepare, [(data, self.limits) for data in images])
        for _, seconds in done:
            self.metrics.observe_preprocess(entry.name, seconds)
        return [array for array, _ in done]

    async def _in_pool(
        self, function: Callable[..., T], jobs: list[tuple[Any, ...]]
    ) -> list[tuple[T, float]]:
        """Run `function(*job)` for each job on the preprocessing pool (bounded across requests: 503
        beyond max_pending_preprocess). Results in order, each with its seconds; the first error
        (by image order) is raised, naming the image when there are several."""
        limit = self.settings.max_pending_preprocess
        if self._pending_preprocess + len(jobs) > limit:
            raise Overloaded(f"{self._pending_preprocess} images are waiting to be decoded", retry_after=1.0)
        loop = asyncio.get_running_loop()
        self._pending_preprocess += len(jobs)
        try:
            futures = [loop.run_in_executor(self._pool, _timed, function, job) for job in jobs]
            done = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            self._pending_preprocess -= len(jobs)
        results: list[tuple[T, float]] = []
        for index, item in enumerate(done):
            if isinstance(item, ServiceError):
                if len(jobs) > 1:
                    item.message = f"image {index}: {item.message}"
                    item.args = (item.message,)
                raise item
            if isinstance(item, BaseException):
                raise item
            results.append(item)
        return results


def _timed(function: Callable[..., T], job: tuple[Any, ...]) -> tuple[T, float]:
    start = time.monotonic()
    result = function(*job)
    return result, time.monotonic() - start


def _stack_outputs(results: list[ItemResult]) -> dict[str, np.ndarray]:
    names = results[0].outputs.keys()
    return {name: np.stack([r.outputs[name] for r in results]) for name in names}


def _timings(results: list[ItemResult], preprocess_s: float, start: float) -> Timings:
    return Timings(
        preprocess_ms=round(preprocess_s * 1000, 3),
        queue_ms=round(max(r.queue_s for r in results) * 1000, 3),
        inference_ms=round(max(r.inference_s for r in results) * 1000, 3),
        total_ms=round((time.monotonic() - start) * 1000, 3),
    )


def top_k_predictions(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The k most probable classes, highest first (ties: lower class id first)."""
    k = min(k, probabilities.shape[0])
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    order = sorted(candidates.tolist(), key=lambda i: (-float(probabilities[i]), i))
    return [Prediction(class_id=i, label=labels[i], score=float(probabilities[i])) for i in order]
