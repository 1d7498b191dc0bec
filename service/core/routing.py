"""Routing across the family: `auto` (the most accurate model whose predicted latency fits a budget) and
cascades (a small model first; only the images it is unsure of go on to the next stage).

The router decides which model(s) serve a request from live batcher statistics and calls the engine
once per stage, so every stage is batched with everyone else's requests for that model.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from service.errors import InvalidArgument, NotReady
from service.lifecycle.records import ModelEntry, ModelRecord
from service.metrics import Metrics
from service.schemas import CascadeImage, Route, StageConfidence, Timings
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.engine import Engine, InferOutcome

AUTO = "auto"
_EWMA_ALPHA = 0.2
# Before a model has run a batch here, its batch time is estimated from its size: measured on this
# project's 2-core CPU, ORT runs these graphs at roughly 25 ms per GMAC per image (b0: 0.39 GMACs,
# 8-11 ms). Live figures replace the estimate after the first batch.
_PRIOR_MS_PER_GMAC = 25.0
_PRIOR_MS_BASE = 1.0
# Decoding and resizing a camera JPEG, per image, before it is measured (ENVIRONMENT.md: 4-6 ms).
_PRIOR_PREPROCESS_MS = 6.0
# The latencies requests to a model really had lately: near saturation queueing outgrows any average,
# so the prediction is never below the slow end (90th percentile) of the last few seconds.
_RECENT_S = 2.0
_RECENT_MIN_SAMPLES = 5
_RECENT_QUANTILE = 0.9
# Arrival rate of auto requests, and the memory of the rate at which a model was too slow: it is not
# chosen again above 80 % of that rate; the remembered rate doubles over a minute.
_RATE_WINDOW_S = 2.0
_RATE_MARGIN = 0.8
_RATE_RECOVERY_S = 60.0


@dataclass(frozen=True)
class Candidate:
    entry: ModelEntry
    accuracy: float
    predicted_ms: float


class Router:
    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._preprocess_ms: dict[str, float] = {}
        self._recent: dict[str, deque[tuple[float, float]]] = {}
        self._arrivals: deque[float] = deque(maxlen=100_000)
        self._overloaded_at: dict[str, tuple[float, float]] = {}  # model -> (auto req/s, when)

    # ------------------------------------------------------------------------------------ dispatch
    def handles(self, name: str) -> bool:
        if name == AUTO:
            return True
        record = self._engine.lifecycle.records.get(name)
        return record is not None and record.is_cascade_folder

    def hint(self, name: str) -> ModelEntry:
        """The entry whose metadata (labels, classes) describes what `name` answers."""
        if name == AUTO:
            return self._ranked(self._settings.auto_budget_ms)[0].entry
        record = self._engine.lifecycle.record(name)
        entry = record.versions[1]
        if not entry.ready:
            raise NotReady(self._engine.lifecycle._why_not_ready(record))
        return entry

    async def infer_images(
        self, name: str, images: Sequence[bytes], deadline: float, budget_ms: float | None
    ) -> InferOutcome:
        if name == AUTO:
            return await self._auto(images, deadline, budget_ms)
        if budget_ms is not None:
            raise InvalidArgument(f"budget_ms applies to '{AUTO}', not to the cascade '{name}'")
        return await self._cascade(self._engine.lifecycle.record(name), images, deadline)

    def auto_available(self) -> bool:
        """Whether `auto` has a model to choose from (a ready model that declares its accuracy)."""
        return any(
            (entry := _auto_candidate(record)) is not None and entry.spec is not None and entry.spec.accuracy
            for record in self._engine.lifecycle.records.values()
        )

    def observe_latency(self, model: str, seconds: float) -> None:
        """A request to `model` took `seconds` inside the engine (preprocess, queue, inference)."""
        window = self._recent.setdefault(model, deque(maxlen=256))
        window.append((time.monotonic(), seconds * 1000))

    def _recent_tail_ms(self, model: str) -> float | None:
        window = self._recent.get(model)
        if not window:
            return None
        now = time.monotonic()
        recent = [ms for at, ms in window if now - at <= _RECENT_S]
        if len(recent) < _RECENT_MIN_SAMPLES:
            return None
        return float(np.quantile(recent, _RECENT_QUANTILE))

    def observe_preprocess(self, model: str, seconds_per_image: float) -> None:
        ms = seconds_per_image * 1000
        previous = self._preprocess_ms.get(model)
        self._preprocess_ms[model] = ms if previous is None else previous + _EWMA_ALPHA * (ms - previous)

    # ----------------------------------------------------------------------------------------- auto
    def predict_ms(self, entry: ModelEntry) -> float:
        """Preprocessing (behind the images already waiting for a decode thread) + queue wait + one
        batch run, from the model's live batcher figures."""
        assert entry.spec is not None
        preprocess = self._preprocess_ms.get(entry.name, _PRIOR_PREPROCESS_MS)
        workers = self._settings.effective_preprocess_workers
        preprocess *= 1 + self._engine.preprocess_backlog / workers
        batcher = entry.batcher
        batch_s = batcher.recent_batch_s if batcher is not None else None
        if batch_s is None:
            batch_ms = _PRIOR_MS_BASE + _PRIOR_MS_PER_GMAC * entry.spec.gmacs
        else:
            batch_ms = batch_s * 1000
        queued = batcher.queue_depth if batcher is not None else 0
        max_batch = batcher.config.max_batch_size if batcher is not None else 1
        waits = math.ceil(queued / max_batch)  # batches ahead of this request
        predicted = preprocess + (waits + 1) * batch_ms
        tail = self._recent_tail_ms(entry.name)
        return predicted if tail is None else max(predicted, tail)

    def _ranked(self, budget_ms: float) -> list[Candidate]:
        """Ready models that declare an accuracy: those predicted to fit the budget, most accurate
        first; then the rest, fastest first."""
        candidates = []
        for record in self._engine.lifecycle.records.values():
            entry = _auto_candidate(record)
            if entry is not None and entry.spec is not None and entry.spec.accuracy is not None:
                accuracy = entry.spec.accuracy.imagenet_top1
                candidates.append(Candidate(entry, accuracy, self.predict_ms(entry)))
        if not candidates:
            raise NotReady(
                f"'{AUTO}' has no model to choose from: no ready model declares its ImageNet accuracy "
                "(model.json `accuracy`; models with random weights never do)"
            )
        limit = budget_ms * self._settings.auto_headroom
        rate = self._arrival_rate()
        fitting, rest = [], []
        for candidate in candidates:
            name = candidate.entry.name
            if candidate.predicted_ms > limit:
                if self._recent_tail_ms(name) is not None:  # measured too slow at this load
                    self._overloaded_at[name] = (rate, time.monotonic())
                rest.append(candidate)
            elif self._too_busy_for(name, rate):
                rest.append(candidate)
            else:
                fitting.append(candidate)
        fitting.sort(key=lambda c: (-c.accuracy, c.predicted_ms))
        rest.sort(key=lambda c: c.predicted_ms)
        return fitting + rest

    def _arrival_rate(self) -> float:
        """`auto` requests per second over the last few seconds."""
        now = time.monotonic()
        while self._arrivals and now - self._arrivals[0] > _RATE_WINDOW_S:
            self._arrivals.popleft()
        return len(self._arrivals) / _RATE_WINDOW_S

    def _too_busy_for(self, model: str, rate: float) -> bool:
        """A model that was measured too slow at some request rate is not chosen again until the rate
        is well below that; the remembered rate rises slowly, so the model is tried again in time.
        Without this memory auto returns to the big model as soon as its queue drains, and each
        return costs a burst of slow answers (the tail the budget is about)."""
        seen = self._overloaded_at.get(model)
        if seen is None:
            return False
        overloaded_rate, since = seen
        allowed = overloaded_rate * _RATE_MARGIN * (1 + (time.monotonic() - since) / _RATE_RECOVERY_S)
        return rate >= allowed

    async def _auto(self, images: Sequence[bytes], deadline: float, budget_ms: float | None) -> InferOutcome:
        budget = self._settings.auto_budget_ms if budget_ms is None else budget_ms
        if not 0 < budget <= 600_000:
            raise InvalidArgument(f"budget_ms must be between 0 and 600000, got {budget:g}")
        self._arrivals.append(time.monotonic())
        chosen = self._ranked(budget)[0]
        fits = chosen.predicted_ms <= budget * self._settings.auto_headroom
        self._metrics.route_chosen(AUTO, chosen.entry.name, fits)
        outcome = await self._engine.infer_images(chosen.entry.name, images, deadline)
        outcome.route = Route(
            policy=AUTO,
            budget_ms=budget,
            predicted_ms=round(chosen.predicted_ms, 3),
            model=outcome.model.name,
            fits=fits,
        )
        return outcome

    # -------------------------------------------------------------------------------------- cascade
    async def _cascade(self, record: ModelRecord, images: Sequence[bytes], deadline: float) -> InferOutcome:
        from service.core.engine import InferOutcome

        start = time.monotonic()
        entry = record.versions[1]
        if not entry.ready or record.cascade is None:
            raise NotReady(self._engine.lifecycle._why_not_ready(record))
        stages = record.cascade.stages
        lifecycle = self._engine.lifecycle
        resize = max((lifecycle.hint(s.model).spec or _no_spec(s.model)).resize_size for s in stages)
        decoded = await self._engine.decode_images(images, resize)
        decode_s = time.monotonic() - start
        count = len(images)
        logs: list[list[StageConfidence]] = [[] for _ in range(count)]
        answered_by: list[str] = [""] * count
        rows: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        pending = list(range(count))
        queue_ms = inference_ms = preprocess_ms = 0.0
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            outcome = await self._engine.infer_decoded(stage.model, [decoded[j] for j in pending], deadline)
            queue_ms = max(queue_ms, outcome.timings.queue_ms)
            inference_ms += outcome.timings.inference_ms
            preprocess_ms += outcome.timings.preprocess_ms
            probabilities = outcome.outputs["probabilities"]
            still: list[int] = []
            for position, image_index in enumerate(pending):
                confidence = float(probabilities[position].max())
                escalate = not last and confidence < (stage.exit_confidence or 0.0)
                logs[image_index].append(
                    StageConfidence(
                        model=outcome.model.name, confidence=round(confidence, 6), escalated=escalate
                    )
                )
                if escalate:
                    still.append(image_index)
                else:
                    answered_by[image_index] = outcome.model.name
                    rows[image_index] = {k: v[position] for k, v in outcome.outputs.items()}
            self._metrics.cascade_stage(record.name, stage.model, entered=len(pending), escalated=len(still))
            pending = still
            if not pending:
                break
        outputs = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        timings = Timings(
            preprocess_ms=round(decode_s * 1000 + preprocess_ms, 3),
            queue_ms=round(queue_ms, 3),
            inference_ms=round(inference_ms, 3),
            total_ms=round((time.monotonic() - start) * 1000, 3),
        )
        route = Route(
            policy="cascade",
            images=[CascadeImage(answered_by=answered_by[i], stages=logs[i]) for i in range(count)],
        )
        return InferOutcome(entry, outputs, timings, route)


def _auto_candidate(record: ModelRecord) -> ModelEntry | None:
    if record.is_cascade_folder:
        return None
    return record.serving()


def _no_spec(name: str) -> NoReturn:
    raise NotReady(f"cascade stage '{name}' has no model.json to read its resolution from")
