"""The core that HTTP and gRPC both call: model registry, preprocessing pool, batchers.

`classify(model, images, top_k, deadline)` and `infer_*` are the only ways in; protocol layers map
the `ServiceError`s raised here to status codes through `service.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.batcher import Batcher, BatcherConfig, ItemResult
from service.errors import InvalidArgument, NotReady, Overloaded, ServiceError, UnknownModel
from service.metrics import Metrics
from service.model_spec import MODEL_FILE
from service.names import match_name, unknown_name_message
from service.preprocess import DecodeLimits, PreprocessSpec, configure_pillow, preprocess
from service.registry import ModelEntry, ModelLoadError, ModelState, discover, validate_files
from service.runtime import OrtRunner, RuntimeOptions, RuntimeUnavailable, warmup_batch_sizes
from service.schemas import BatcherInfo, ModelInfo, Prediction, Timings
from service.settings import Settings

log = logging.getLogger(__name__)

# After the drain timeout: how long a batch already running may still take before stop gives up on it.
_ABORT_GRACE_S = 2.0


@dataclass
class InferOutcome:
    """Raw outputs, one row per image, plus where the time went."""

    model: ModelEntry
    outputs: dict[str, np.ndarray]
    timings: Timings


@dataclass
class ClassifyOutcome:
    model: ModelEntry
    predictions: list[list[Prediction]]
    timings: Timings


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self.entries: dict[str, ModelEntry] = {}
        self._runners: dict[str, OrtRunner] = {}
        self._batchers: dict[str, Batcher] = {}
        self._preprocess_specs: dict[str, PreprocessSpec] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending_preprocess = 0
        self._accepting = False
        self._draining = False
        self._load_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Discover models and begin loading them in the background; `wait_loaded` waits for that."""
        configure_pillow()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.effective_preprocess_workers, thread_name_prefix="preprocess"
        )
        self.entries = discover(self.settings.repository, self.settings.model_names)
        if not self.entries:
            log.warning("event=no_models repository=%s", self.settings.repository)
        for entry in self.entries.values():
            self.metrics.set_ready(entry.name, False)
            if entry.state is ModelState.FAILED:
                log.error("event=model_failed model=%s reason=%r", entry.name, entry.reason)
        if self.settings.default_model and self.settings.default_model not in self.entries:
            raise ModelLoadError(f"default model '{self.settings.default_model}' is not configured")
        self._accepting = True
        self._load_task = asyncio.create_task(self._load_all(), name="load-models")

    async def wait_loaded(self) -> None:
        """Wait until every model is ready or failed; with `strict`, raise if any failed."""
        if self._load_task is not None:
            await self._load_task
        if self.settings.strict:
            failed = {e.name: e.reason for e in self.entries.values() if e.state is not ModelState.READY}
            if failed or not self.entries:
                raise ModelLoadError(f"strict mode: models not ready: {failed or 'none configured'}")

    async def _load_all(self) -> None:
        # One at a time, smallest graph first: loading is CPU-bound, the cores also serve the models
        # already up, and the small models (the default among them, usually) are ready soonest.
        loading = [e for e in self.entries.values() if e.state is ModelState.LOADING]
        for entry in sorted(loading, key=_graph_size):
            await self._load(entry)

    async def _load(self, entry: ModelEntry) -> None:
        start = time.monotonic()
        try:
            runner = await asyncio.to_thread(self._load_blocking, entry)
        except (ModelLoadError, RuntimeUnavailable) as exc:
            entry.fail(str(exc))
            log.error("event=model_failed model=%s reason=%r", entry.name, entry.reason)
            if isinstance(exc, RuntimeUnavailable):
                raise
            return
        except Exception as exc:  # ORT raises its own types for corrupt graphs
            entry.fail(f"onnxruntime could not load {entry.path}: {exc}")
            log.error("event=model_failed model=%s reason=%r", entry.name, entry.reason)
            return
        assert entry.spec is not None
        config = BatcherConfig(
            max_batch_size=self.settings.batch_size_for(runner.provider, entry.spec.gmacs),
            instances=self.settings.instances_for(runner.provider),
            max_queue_delay_s=self.settings.max_queue_delay_ms / 1000,
            max_queue_size=self.settings.max_queue_size,
        )
        shape = (3, entry.spec.crop_size, entry.spec.crop_size)
        batcher = Batcher(entry.name, runner, config, observer=self.metrics, item_shape=shape)
        batcher.start()
        self._runners[entry.name] = runner
        self._batchers[entry.name] = batcher
        self._preprocess_specs[entry.name] = PreprocessSpec.from_model_spec(entry.spec)
        entry.provider = runner.provider
        entry.load_seconds = time.monotonic() - start
        entry.state = ModelState.READY
        self.metrics.set_ready(entry.name, True)
        log.info(
            "event=model_ready model=%s version=%s provider=%s resolution=%d weights=%s seconds=%.2f",
            entry.name, entry.version, runner.provider, entry.spec.crop_size, entry.spec.weights.kind,
            entry.load_seconds,
        )  # fmt: skip

    def _load_blocking(self, entry: ModelEntry) -> OrtRunner:
        spec, labels = validate_files(entry)
        entry.spec, entry.labels = spec, labels
        assert entry.path is not None
        runner = OrtRunner(
            entry.path / MODEL_FILE,
            RuntimeOptions.from_settings(self.settings),
            output_names=["logits", "probabilities"],
        )
        sizes = warmup_batch_sizes(self.settings.batch_size_for(runner.provider, spec.gmacs))
        shape = (3, spec.crop_size, spec.crop_size)
        runner.warm_up(shape, sizes, self.settings.warmup_runs)
        return runner

    def begin_drain(self) -> None:
        """Shutting down: report not ready (so balancers move on) but finish requests in flight."""
        self._draining = True

    async def stop(self) -> None:
        """Stop accepting, let queued work finish (bounded by drain_timeout_s), release everything."""
        self._accepting = False
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._load_task
        closing = [batcher.close(drain=True) for batcher in self._batchers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*closing), timeout=self.settings.drain_timeout_s)
        except TimeoutError:
            log.error("event=drain_timeout seconds=%s", self.settings.drain_timeout_s)
            # Fail what is still queued; a batch already inside the runtime cannot be interrupted,
            # so wait for it only briefly rather than let a stuck run hold the stop forever.
            aborting = asyncio.gather(*(b.close(drain=False) for b in self._batchers.values()))
            try:
                await asyncio.wait_for(aborting, timeout=_ABORT_GRACE_S)
            except TimeoutError:
                log.error("event=abandoned_running_batches seconds=%s", _ABORT_GRACE_S)
        for entry in self.entries.values():
            if entry.state is ModelState.READY:
                entry.state = ModelState.STOPPED
            self.metrics.set_ready(entry.name, False)
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
            and bool(self.entries)
            and all(e.state is ModelState.READY for e in self.entries.values())
        )

    def readiness(self) -> dict[str, str]:
        return {
            name: e.state.value if e.reason is None else f"{e.state.value}: {e.reason}"
            for name, e in self.entries.items()
        }

    @property
    def default_model(self) -> str | None:
        """The configured default, else the first ready model with real (non-random) weights."""
        if self.settings.default_model:
            return self.settings.default_model
        ready = [e for e in self.entries.values() if e.state is ModelState.READY and e.spec is not None]
        real = [e for e in ready if e.spec is not None and e.spec.weights.kind != "random"]
        chosen = real or ready
        return chosen[0].name if chosen else None

    def lookup(self, name: str) -> ModelEntry:
        """The configured model called `name`, in whatever state. Raises UnknownModel."""
        match = match_name(name, self.entries)  # case-insensitive: B5 is b5
        if match is None:
            raise UnknownModel(unknown_name_message(name, self.entries))
        return self.entries[match]

    def resolve(self, name: str | None) -> ModelEntry:
        """The ready model called `name` (None: the default). Raises UnknownModel / NotReady."""
        if not self._accepting:
            raise NotReady("server is shutting down")
        if name is None or name == "":
            name = self.default_model
            if name is None:
                raise NotReady("no model is ready yet")
        entry = self.lookup(name)
        if entry.state is not ModelState.READY:
            detail = f": {entry.reason}" if entry.reason else ""
            raise NotReady(f"model '{name}' is {entry.state.value}{detail}")
        return entry

    def describe(self, entry: ModelEntry) -> ModelInfo:
        spec = entry.spec
        batcher = self._batchers.get(entry.name)
        info = ModelInfo(
            name=entry.name,
            version=entry.version,
            state=entry.state.value,
            ready=entry.state is ModelState.READY,
            reason=entry.reason,
            default=entry.name == self.default_model,
            provider=entry.provider,
        )
        if spec is not None:
            info = info.model_copy(
                update=dict(
                    variant=spec.variant,
                    architecture=spec.architecture,
                    resolution=spec.crop_size,
                    resize_size=spec.resize_size,
                    interpolation=spec.interpolation,
                    normalization=spec.normalization,
                    num_classes=spec.num_classes,
                    parameters=spec.parameters,
                    gmacs=spec.gmacs,
                    weights=spec.weights,
                    inputs=list(spec.inputs),
                    outputs=list(spec.outputs),
                    opset=spec.opset,
                )
            )
        if batcher is not None:
            info.batcher = BatcherInfo(
                max_batch_size=batcher.config.max_batch_size,
                max_queue_delay_ms=batcher.config.max_queue_delay_s * 1000,
                max_queue_size=batcher.config.max_queue_size,
                queue_depth=batcher.queue_depth,
            )
        return info

    def describe_all(self) -> list[ModelInfo]:
        return [self.describe(e) for e in self.entries.values()]

    # ------------------------------------------------------------------ requests
    def check_top_k(self, entry: ModelEntry, top_k: int) -> int:
        assert entry.spec is not None
        upper = min(entry.spec.num_classes, self.settings.max_top_k)
        if not 1 <= top_k <= upper:
            raise InvalidArgument(f"top_k must be between 1 and {upper}, got {top_k}")
        return top_k

    async def classify(
        self, model: str | None, images: Sequence[bytes], top_k: int, deadline: float | None = None
    ) -> ClassifyOutcome:
        entry = self.resolve(model)
        self.check_top_k(entry, top_k)
        outcome = await self._infer_images(entry, images, deadline)
        probabilities = outcome.outputs["probabilities"]
        predictions = [top_k_predictions(row, entry.labels, top_k) for row in probabilities]
        return ClassifyOutcome(entry, predictions, outcome.timings)

    async def infer_images(
        self, model: str | None, images: Sequence[bytes], deadline: float | None = None
    ) -> InferOutcome:
        """Encoded images -> preprocess (thread pool) -> batcher."""
        return await self._infer_images(self.resolve(model), images, deadline)

    async def _infer_images(
        self, entry: ModelEntry, images: Sequence[bytes], deadline: float | None
    ) -> InferOutcome:
        start = time.monotonic()
        self._check_count(len(images))
        batcher = self._batchers[entry.name]
        # Reject overload before spending CPU on decoding.
        self.check_queue_room(entry, len(images))
        arrays = await self._preprocess_all(entry, images)
        preprocess_s = time.monotonic() - start
        results = await batcher.submit(arrays, deadline=deadline or self._default_deadline(start))
        return InferOutcome(entry, _stack_outputs(results), _timings(results, preprocess_s, start))

    async def infer_pixels(
        self, model: str | None, pixels: np.ndarray, deadline: float | None = None
    ) -> InferOutcome:
        """Already-preprocessed uint8 (N, 3, S, S) at the model's crop size -> batcher."""
        start = time.monotonic()
        entry = self.resolve(model)
        assert entry.spec is not None
        size = entry.spec.crop_size
        expected = (3, size, size)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise InvalidArgument(
                f"model '{entry.name}' takes uint8 pixels of shape [N, 3, {size}, {size}], "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        self._check_count(pixels.shape[0])
        batcher = self._batchers[entry.name]
        items = [np.ascontiguousarray(p) for p in pixels]
        results = await batcher.submit(items, deadline=deadline or self._default_deadline(start))
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
        batcher = self._batchers[entry.name]
        if batcher.queue_depth + count > batcher.config.max_queue_size:
            raise Overloaded(
                f"model '{batcher.name}' queue is full ({batcher.queue_depth} images waiting)",
                retry_after=batcher.retry_after(count),
            )

    async def _preprocess_all(self, entry: ModelEntry, images: Sequence[bytes]) -> list[np.ndarray]:
        limit = self.settings.max_pending_preprocess
        if self._pending_preprocess + len(images) > limit:
            raise Overloaded(f"{self._pending_preprocess} images are waiting to be decoded", retry_after=1.0)
        spec = self._preprocess_specs[entry.name]
        loop = asyncio.get_running_loop()
        self._pending_preprocess += len(images)
        try:
            jobs = [
                loop.run_in_executor(self._pool, _timed_preprocess, data, spec, self.limits)
                for data in images
            ]
            done = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            self._pending_preprocess -= len(images)
        arrays = []
        for index, item in enumerate(done):
            if isinstance(item, ServiceError):
                if len(images) > 1:
                    item.message = f"image {index}: {item.message}"
                    item.args = (item.message,)
                raise item
            if isinstance(item, BaseException):
                raise item
            array, seconds = item
            self.metrics.observe_preprocess(entry.name, seconds)
            arrays.append(array)
        return arrays


def _graph_size(entry: ModelEntry) -> int:
    try:
        return (entry.path / MODEL_FILE).stat().st_size if entry.path else 0
    except OSError:
        return 0


def _timed_preprocess(data: bytes, spec: PreprocessSpec, limits: DecodeLimits) -> tuple[np.ndarray, float]:
    start = time.monotonic()
    array = preprocess(data, spec, limits)
    return array, time.monotonic() - start


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
