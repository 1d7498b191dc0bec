"""Routing across the family: `auto` (the most accurate model whose predicted latency fits a budget) and
cascades (a small model first; only the images it is unsure of go on to the next stage).

The router sits above the executor: it decides which model(s) serve an admitted request from live
figures, then runs each stage through the executor, so every stage is preprocessed by its own backend
and batched with everyone else's requests for that model.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from service.core.executor import DEFAULT_RUN, Executor, RunOptions
from service.core.live import LiveFigures
from service.core.outcomes import InferOutcome
from service.core.target import AUTO, Target
from service.errors import InvalidArgument, NotReady
from service.lifecycle.manager import Lifecycle
from service.lifecycle.records import ModelEntry, ModelRecord
from service.lifecycle.views import why_not_ready
from service.metrics import Metrics
from service.model_spec import ModelSpec
from service.preprocess.pool import PreprocessPool
from service.runtime.outputs import NOTHING, Wanted
from service.schemas import CascadeImage, Route, StageConfidence, Timings
from service.settings import Settings

# Before a model has run a batch here, its batch time is estimated from its size: measured on this
# project's 2-core CPU, ORT runs these graphs at roughly 25 ms per GMAC per image (b0: 0.39 GMACs,
# 8-11 ms). Live figures replace the estimate after the first batch.
_PRIOR_MS_PER_GMAC = 25.0
_PRIOR_MS_BASE = 1.0
# Decoding and resizing a camera JPEG, per image, before it is measured (ENVIRONMENT.md: 4-6 ms).
_PRIOR_PREPROCESS_MS = 6.0
# Arrival rate of auto requests, and the memory of the rate at which a model was too slow: it is not
# chosen again above 80 % of that rate; the remembered rate doubles over a minute. A model is
# remembered only on sustained evidence: its 90th percentile over at least this many recent requests
# (a stall that slows a handful of requests, or a cold start, is not a load it cannot carry).
_RATE_WINDOW_S = 2.0
_RATE_MIN_SPAN_S = 0.25
_RATE_MARGIN = 0.8
_RATE_RECOVERY_S = 60.0
_OVERLOAD_MIN_SAMPLES = 20

NO_AUTO_CANDIDATE = (
    f"'{AUTO}' has no model to choose from: no ready model declares its ImageNet accuracy or carries a "
    "measured one (model.json `accuracy` or `measured`; models with random weights declare none)"
)


@dataclass(frozen=True)
class Candidate:
    entry: ModelEntry
    record: ModelRecord
    accuracy: float
    predicted_ms: float


def auto_candidates(records: Iterable[ModelRecord]) -> list[tuple[ModelRecord, ModelEntry]]:
    """Ready models (not cascades) that declare an accuracy or carry a measured one, and share one label
    set: what `auto` may choose from. Models of several label sets (ImageNet beside a 10-class model of
    your own) never stand in for each other: `auto` keeps the set most of them share (on a tie, the set
    of the first such model by name)."""
    found = []
    for record in records:
        entry = None if record.is_cascade_folder else record.serving()
        spec = entry.spec if entry is not None else None
        if (
            entry is not None
            and spec is not None
            and (spec.accuracy is not None or spec.measured is not None)
        ):
            found.append((record, entry))
    return _one_label_set(found)


def _one_label_set(
    found: list[tuple[ModelRecord, ModelEntry]],
) -> list[tuple[ModelRecord, ModelEntry]]:
    sizes: dict[tuple[str, ...], int] = {}
    for _, entry in sorted(found, key=lambda pair: pair[0].name):
        labels = tuple(entry.labels)
        sizes[labels] = sizes.get(labels, 0) + 1
    if len(sizes) <= 1:
        return found
    kept = max(sizes, key=lambda labels: sizes[labels])  # the first of equal sizes: insertion order
    return [pair for pair in found if tuple(pair[1].labels) == kept]


def ranking_accuracy(specs: Sequence[ModelSpec]) -> tuple[list[float], str]:
    """The top-1 `auto` ranks these candidates by, and which figure that is.

    Measured accuracy wins when every candidate was measured on the same photo set (figures from one
    set compare; a measured top-1 beside someone else's published ImageNet figure does not). Otherwise
    the declared ImageNet top-1, and a measured figure only for a model that declares none.
    """
    measured = [spec.measured for spec in specs]
    datasets = {m.dataset for m in measured if m is not None}
    if specs and all(m is not None for m in measured) and len(datasets) == 1:
        return [m.top1 for m in measured if m is not None], f"measured on {datasets.pop()}"
    figures = []
    for spec in specs:
        if spec.accuracy is not None:
            figures.append(spec.accuracy.imagenet_top1)
        else:
            assert spec.measured is not None
            figures.append(spec.measured.top1)
    return figures, "declared"


class Router:
    def __init__(
        self,
        executor: Executor,
        lifecycle: Lifecycle,
        pool: PreprocessPool,
        live: LiveFigures,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._executor = executor
        self._lifecycle = lifecycle
        self._pool = pool
        self._live = live
        self._settings = settings
        self._metrics = metrics
        self._arrivals: deque[float] = deque(maxlen=100_000)
        self._overloaded_at: dict[str, tuple[float, float]] = {}  # model -> (auto req/s, when)

    async def run(
        self, target: Target, images: Sequence[bytes], deadline: float, run: RunOptions = DEFAULT_RUN
    ) -> InferOutcome:
        """Route, then run each chosen model through the executor (which asks the response cache under
        that model: `auto` and cascades cache under the model that answered)."""
        if target.kind == "auto":
            assert target.budget_ms is not None
            return await self._auto(images, deadline, target.budget_ms, run)
        assert target.record is not None
        return await self._cascade(target.record, images, deadline, run)

    # ----------------------------------------------------------------------------------------- auto
    def predict_ms(self, entry: ModelEntry) -> float:
        """Preprocessing (behind the images already waiting for a decode thread) + queue wait + one
        batch run, from the model's live batcher figures; never below its recent measured tail."""
        assert entry.spec is not None
        preprocess = self._live.preprocess_ms(entry.name) or _PRIOR_PREPROCESS_MS
        batcher = entry.batcher
        if entry.backend is not None and entry.backend.in_batch and batcher is not None:
            # the batch threads decode the queued images, each just before its batch runs
            preprocess *= 1 + batcher.queue_depth / batcher.config.instances
        else:
            preprocess *= 1 + self._pool.backlog / self._pool.workers
        batch_s = batcher.recent_batch_s if batcher is not None else None
        if batch_s is None:
            batch_ms = _PRIOR_MS_BASE + _PRIOR_MS_PER_GMAC * entry.spec.gmacs
        else:
            batch_ms = batch_s * 1000
        queued = batcher.queue_depth if batcher is not None else 0
        max_batch = batcher.config.max_batch_size if batcher is not None else 1
        waits = math.ceil(queued / max_batch)  # batches ahead of this request
        predicted = preprocess + (waits + 1) * batch_ms
        tail = self._live.recent_tail_ms(entry.name)
        return predicted if tail is None else max(predicted, tail)

    def _ranked(self, budget_ms: float, wanted: Wanted = NOTHING) -> list[Candidate]:
        """Candidates predicted to fit the budget, most accurate first; then the rest, fastest first.
        Only models that offer the extra outputs asked for (`wanted`) are candidates."""
        found = [
            (record, entry)
            for record, entry in auto_candidates(self._lifecycle.records.values())
            if entry.spec is not None and wanted.outputs <= set(entry.spec.output_names)
        ]
        if not found and wanted.any:
            raise InvalidArgument(f"no model auto may choose offers {', '.join(sorted(wanted.outputs))}")
        specs = [entry.spec for _, entry in found if entry.spec is not None]
        accuracies, _ = ranking_accuracy(specs)
        candidates = [
            Candidate(entry, record, accuracy, self.predict_ms(entry))
            for (record, entry), accuracy in zip(found, accuracies, strict=True)
        ]
        if not candidates:
            raise NotReady(NO_AUTO_CANDIDATE)
        limit = budget_ms * self._settings.auto_headroom
        rate = self._arrival_rate()
        fitting, rest = [], []
        for candidate in candidates:
            name = candidate.entry.name
            if candidate.predicted_ms > limit:
                sustained = self._live.recent_tail_ms(name, _OVERLOAD_MIN_SAMPLES)
                if sustained is not None and sustained > limit:  # measured too slow at this load
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
        """`auto` requests per second over the last few seconds (over the time since they began, when
        that is shorter: right after a pause the full window would read a fraction of the real rate)."""
        now = time.monotonic()
        while self._arrivals and now - self._arrivals[0] > _RATE_WINDOW_S:
            self._arrivals.popleft()
        if not self._arrivals:
            return 0.0
        span = min(_RATE_WINDOW_S, max(_RATE_MIN_SPAN_S, now - self._arrivals[0]))
        return len(self._arrivals) / span

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

    async def _auto(
        self, images: Sequence[bytes], deadline: float, budget_ms: float, run: RunOptions
    ) -> InferOutcome:
        self._arrivals.append(time.monotonic())
        chosen = self._ranked(budget_ms, run.wanted)[0]
        fits = chosen.predicted_ms <= budget_ms * self._settings.auto_headroom
        self._metrics.route_chosen(AUTO, chosen.entry.name, fits)
        outcome = await self._executor.run_images(chosen.record, None, images, deadline, run)
        outcome.route = Route(
            policy=AUTO,
            budget_ms=budget_ms,
            predicted_ms=round(chosen.predicted_ms, 3),
            model=outcome.model.name,
            fits=fits,
        )
        return outcome

    # -------------------------------------------------------------------------------------- cascade
    async def _cascade(
        self, record: ModelRecord, images: Sequence[bytes], deadline: float, run: RunOptions
    ) -> InferOutcome:
        """Each stage runs the images still unsure through the executor; an image leaves at the first
        stage whose top probability reaches that stage's exit confidence. Extra outputs (`run.wanted`) are
        asked of every stage (`run.wanted`), so each image's come from the stage that answered it."""
        start = time.monotonic()
        entry = record.versions[1]
        if not entry.ready or record.cascade is None:
            raise NotReady(why_not_ready(record))
        stages = record.cascade.stages
        count = len(images)
        logs: list[list[StageConfidence]] = [[] for _ in range(count)]
        answered_by: list[str] = [""] * count
        rows: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        cached = [False] * count
        pending = list(range(count))
        queue_ms = inference_ms = preprocess_ms = 0.0
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            stage_record = self._lifecycle.record(stage.model)
            outcome = await self._executor.run_images(
                stage_record, None, [images[j] for j in pending], deadline, run
            )
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
                    cached[image_index] = bool(outcome.cached) and outcome.cached[position]
            self._metrics.cascade_stage(record.name, stage.model, entered=len(pending), escalated=len(still))
            pending = still
            if not pending:
                break
        outputs = {key: _stack([row[key] for row in rows]) for key in rows[0]}
        timings = Timings(
            preprocess_ms=round(preprocess_ms, 3),
            queue_ms=round(queue_ms, 3),
            inference_ms=round(inference_ms, 3),
            total_ms=round((time.monotonic() - start) * 1000, 3),
        )
        route = Route(
            policy="cascade",
            images=[CascadeImage(answered_by=answered_by[i], stages=logs[i]) for i in range(count)],
        )
        return InferOutcome(entry, outputs, timings, route, tuple(cached) if any(cached) else ())


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """One array of the images' rows; where stages differ in shape (a map grid, a feature size), an
    object array holding each image's own row."""
    if all(row.shape == rows[0].shape for row in rows):
        return np.stack(rows)
    out = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        out[index] = row
    return out
