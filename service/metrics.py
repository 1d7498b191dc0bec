"""Prometheus collectors, registered on an injected CollectorRegistry (never the global one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from service.statistics import Statistics

# Latency buckets from 1 ms to 30 s: CPU b0 runs in a few ms, b7 batches take seconds.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_M = TypeVar("_M", Counter, Gauge, Histogram)


def _children(metric: _M) -> Callable[..., _M]:
    """`metric.labels`, remembering each child: prometheus_client's labels() takes a lock and builds
    tuples on every call, several times per request on the hot path. No series is ever removed here,
    so a remembered child stays the one exported; the memory is the metric's own cardinality."""
    return cache(metric.labels)


class LoadRatio(Collector):
    """The signal to autoscale on: images a model holds (being preprocessed, queued or running) over
    the images it can run at once (max batch size x instances). 1.0 means every runner slot is taken;
    above 1 work waits. Read at scrape time, so the gauges are exact at that instant; the counter is
    their integral over time, so `rate(effnet_load_ratio_seconds_total[1m])` is the mean ratio of
    the last minute whatever the scrape interval (a sampled gauge would alias under bursty load).
    The pod-wide ratio is the busiest model's: one saturated model queues whatever the others do."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._capacity: dict[str, int] = {}
        self._integral: dict[str, float] = {}
        self._since: dict[str, float] = {}

    def _advance(self, model: str, now: float) -> None:
        """Add the ratio held since the last change to the model's integral (lock held)."""
        capacity = self._capacity.get(model)
        if capacity:
            held = now - self._since.get(model, now)
            self._integral[model] = self._integral.get(model, 0.0) + held * self._in_flight[model] / capacity
        self._since[model] = now

    def enter(self, model: str, images: int, capacity: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._in_flight.setdefault(model, 0)
            self._advance(model, now)
            self._in_flight[model] += images
            self._capacity[model] = max(1, capacity)

    def leave(self, model: str, images: int) -> None:
        with self._lock:
            self._advance(model, time.monotonic())
            self._in_flight[model] -= images

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "effnet_in_flight_images",
            "Images a model holds now: being preprocessed, queued or running",
            labels=["model"],
        )
        ratio = GaugeMetricFamily(
            "effnet_load_ratio",
            "In-flight images over the images the model can run at once (max batch size x instances)",
            labels=["model"],
        )
        integral = CounterMetricFamily(
            "effnet_load_ratio_seconds",
            "Time integral of effnet_load_ratio: rate() over a window is the window's mean load ratio",
            labels=["model"],
        )
        with self._lock:
            now = time.monotonic()
            busiest = 0.0
            for model in sorted(self._capacity):
                self._advance(model, now)
                value = self._in_flight[model] / self._capacity[model]
                busiest = max(busiest, value)
                in_flight.add_metric([model], self._in_flight[model])
                ratio.add_metric([model], value)
                integral.add_metric([model], self._integral.get(model, 0.0))
        yield in_flight
        yield ratio
        yield integral
        yield GaugeMetricFamily(
            "effnet_pod_load_ratio",
            "The busiest model's effnet_load_ratio: the pod-wide autoscaling signal",
            value=busiest,
        )


class Metrics:
    """The service's metric set (Prometheus naming). Label values are bounded: model names come
    from the repository, protocol from a fixed set, code from the status table."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "effnet_requests_total",
            "Requests answered, by protocol, model and status code",
            ["protocol", "model", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "effnet_request_duration_seconds",
            "Time from request received to response ready",
            ["protocol", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.preprocess_duration = Histogram(
            "effnet_preprocess_duration_seconds",
            "Decode and resize time per image",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "effnet_queue_duration_seconds",
            "Time an image waited in the batcher queue",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "effnet_inference_duration_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "effnet_batch_size",
            "Images per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth_gauge = Gauge(
            "effnet_queue_depth", "Images waiting in the batcher queue", ["model"], registry=self.registry
        )
        self.queue_depth_priority = Gauge(
            "effnet_queue_depth_by_priority",
            "Images waiting in the batcher queue, by request priority (high, normal, low)",
            ["model", "priority"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "effnet_model_ready",
            "1 when the model is loaded and warmed up",
            ["model"],
            registry=self.registry,
        )
        self.expired = Counter(
            "effnet_expired_total",
            "Images dropped unrun because their deadline passed in the queue",
            ["model"],
            registry=self.registry,
        )
        self.lane_batches = Counter(
            "effnet_priority_lane_batches_total",
            "Batches of high-priority images run on the lane (one runner more, while every instance is busy)",
            ["model"],
            registry=self.registry,
        )
        self.aged_passes_total = Counter(
            "effnet_priority_aged_passes_total",
            "Queued images taken ahead of a higher priority because they had waited the aging time "
            "(at most a quarter of the images taken)",
            ["model"],
            registry=self.registry,
        )
        self.split_calls = Counter(
            "effnet_split_engine_calls_total",
            "Split mode: calls the engine took, by path (batch: one-image pixel calls queued and answered "
            "per batch; call: a task each)",
            ["path"],
            registry=self.registry,
        )

        self.model_loads = Counter(
            "effnet_model_loads_total",
            "Model version loads, by outcome (success, failed)",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.model_unloads = Counter(
            "effnet_model_unloads_total",
            "Model version unloads, by reason (api, poll, evicted, reload, start, lazy)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "effnet_model_load_seconds",
            "Time to validate, create and warm up a model version",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=self.registry,
        )
        self.model_memory = Gauge(
            "effnet_model_memory_bytes",
            "Resident memory a loaded model version took (RSS growth at load)",
            ["model", "version"],
            registry=self.registry,
        )

        self.route_choices = Counter(
            "effnet_route_choices_total",
            "Models chosen by a routing policy (auto), and whether the prediction fitted the budget",
            ["policy", "model", "fits"],
            registry=self.registry,
        )
        self.load = LoadRatio()
        self.registry.register(self.load)
        self.cascade_images = Counter(
            "effnet_cascade_stage_images_total",
            "Images that entered a cascade stage",
            ["cascade", "stage"],
            registry=self.registry,
        )
        self.cascade_escalations = Counter(
            "effnet_cascade_escalations_total",
            "Images a cascade stage was unsure of and passed on (escalation rate: this / stage_images)",
            ["cascade", "stage"],
            registry=self.registry,
        )

        self.cache_lookups_total = Counter(
            "effnet_cache_lookups_total",
            "Response cache lookups per image, by backend (memory, redis) and result (hit, miss)",
            ["backend", "model", "result"],
            registry=self.registry,
        )
        self.cache_stored_bytes = Counter(
            "effnet_cache_stored_bytes_total",
            "Bytes of answers written to the response cache",
            ["backend"],
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "effnet_cache_bytes",
            "Bytes the in-process response cache holds",
            ["backend"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "effnet_cache_errors_total",
            "Response cache calls that failed or timed out (the request was served without the cache)",
            ["backend", "operation"],
            registry=self.registry,
        )
        # Triton's statistics extension, fed by the same calls as the histograms (service/statistics.py).
        self.statistics = Statistics()
        # The series every request or batch touches.
        self._requests = _children(self.requests)
        self._request_duration = _children(self.request_duration)
        self._preprocess_duration = _children(self.preprocess_duration)
        self._inference_duration = _children(self.inference_duration)
        self._batch_size = _children(self.batch_size)
        self._queue_duration = _children(self.queue_duration)
        self._queue_depth = _children(self.queue_depth_gauge)
        self._queue_depth_priority = _children(self.queue_depth_priority)

    # --- BatchObserver protocol (service.runtime.batcher) ---
    def batch_completed(
        self, model: str, size: int, inference_s: float, prepare_s: float = 0.0, output_s: float = 0.0
    ) -> None:
        self._batch_size(model).observe(size)
        self._inference_duration(model).observe(inference_s)
        self.statistics.batch(model, size, prepare_s, inference_s, output_s)

    def item_dequeued(self, model: str, queue_s: float) -> None:
        self._queue_duration(model).observe(queue_s)
        self.statistics.queued(model, queue_s)

    def queue_depth(self, model: str, depth: int) -> None:
        self._queue_depth(model).set(depth)

    def items_expired(self, model: str, count: int) -> None:
        self.expired.labels(model).inc(count)

    def priority_depth(self, model: str, priority: str, depth: int) -> None:
        self._queue_depth_priority(model, priority).set(depth)

    def aged_passes(self, model: str, count: int) -> None:
        self.aged_passes_total.labels(model).inc(count)

    def lane_batch(self, model: str) -> None:
        self.lane_batches.labels(model).inc()

    # --- the response cache (service.core.cache) ---
    def cache_lookups(self, backend: str, model: str, hits: int, misses: int, seconds: float = 0.0) -> None:
        if hits:
            self.cache_lookups_total.labels(backend, model, "hit").inc(hits)
        if misses:
            self.cache_lookups_total.labels(backend, model, "miss").inc(misses)
        self.statistics.cache(model, hits, misses, seconds)

    def cache_stored(self, backend: str, size: int) -> None:
        self.cache_stored_bytes.labels(backend).inc(size)

    def cache_size(self, backend: str, size: int) -> None:
        self.cache_bytes.labels(backend).set(size)

    def cache_error(self, backend: str, operation: str) -> None:
        self.cache_errors.labels(backend, operation).inc()

    # --- used by the engine and the protocol layers ---
    def observe_request(
        self, protocol: str, model: str, code: str | int, seconds: float, inference: bool | None = None
    ) -> None:
        """`inference`: whether the request was admitted to run on `model` (None: not one that runs),
        True when it succeeded; such requests are the statistics' success and fail."""
        self._requests(protocol, model, str(code)).inc()
        self._request_duration(protocol, model).observe(seconds)
        if inference is not None:
            self.statistics.request(model, inference, seconds)

    def observe_preprocess(self, model: str, seconds: float) -> None:
        self._preprocess_duration(model).observe(seconds)
        self.statistics.preprocessed(model, seconds)

    def set_ready(self, model: str, ready: bool) -> None:
        self.model_ready.labels(model).set(1 if ready else 0)

    def model_loaded(self, model: str, version: str, outcome: str, seconds: float | None) -> None:
        self.model_loads.labels(model, version, outcome).inc()
        if seconds is not None:
            self.model_load_seconds.labels(model).observe(seconds)

    def set_model_memory(self, model: str, version: str, size: int) -> None:
        self.model_memory.labels(model, version).set(size)

    def model_unloaded(self, model: str, version: str, reason: str) -> None:
        self.model_unloads.labels(model, reason).inc()
        self.model_memory.labels(model, version).set(0)

    def route_chosen(self, policy: str, model: str, fits: bool) -> None:
        self.route_choices.labels(policy, model, "true" if fits else "false").inc()

    def cascade_stage(self, cascade: str, stage: str, entered: int, escalated: int) -> None:
        self.cascade_images.labels(cascade, stage).inc(entered)
        self.cascade_escalations.labels(cascade, stage).inc(escalated)

    def render(self) -> bytes:
        return generate_latest(self.registry)
