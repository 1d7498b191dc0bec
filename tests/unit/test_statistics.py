"""Triton's statistics, counted by the same Metrics calls that observe the Prometheus histograms."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.metrics import Metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_one_batch_feeds_the_histograms_and_the_statistics() -> None:
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    for queue_s in (0.001, 0.003, 0.002):
        metrics.item_dequeued("m", queue_s)
    metrics.observe_preprocess("m", 0.004)  # one image decoded; the two others were pixels
    metrics.batch_completed("m", 3, 0.010, prepare_s=0.004, output_s=0.0005)
    metrics.batch_completed("m", 1, 0.002)

    assert _sample(metrics, "effnet_batch_size_count", model="m") == 2
    assert _sample(metrics, "effnet_queue_duration_seconds_count", model="m") == 3
    counts = metrics.statistics.of("m")
    assert (counts.inference_count, counts.execution_count) == (4, 2)
    assert (counts.queue.count, counts.queue.ns) == (3, 6_000_000)
    assert _sample(metrics, "effnet_queue_duration_seconds_sum", model="m") * 1e9 == counts.queue.ns
    # Every image carries its batch's run; the three compute counts stay equal (perf_analyzer checks).
    assert (counts.compute_infer.count, counts.compute_infer.ns) == (4, 32_000_000)
    assert counts.compute_input.count == counts.compute_infer.count == counts.compute_output.count == 4
    assert counts.compute_input.ns == 4_000_000
    assert sorted(counts.batches) == [1, 3]
    assert (counts.batches[3].compute_infer.count, counts.batches[3].compute_infer.ns) == (1, 10_000_000)
    assert counts.batches[3].compute_output.ns == 500_000
    assert counts.last_inference_ms > 0


def test_requests_count_only_when_they_ran_on_the_model() -> None:
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    metrics.observe_request("v2-http", "m", 200, 0.01, inference=True)
    metrics.observe_request("v2-http", "m", 422, 0.002, inference=False)
    metrics.observe_request("v2-http", "m", 200, 0.001)  # metadata: not an inference
    counts = metrics.statistics.of("m")
    assert (counts.success.count, counts.success.ns) == (1, 10_000_000)
    assert (counts.fail.count, counts.fail.ns) == (1, 2_000_000)
    assert _sample(metrics, "effnet_requests_total", protocol="v2-http", model="m", code="200") == 2


def test_cache_lookups_share_their_time_among_hits_and_misses() -> None:
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    metrics.cache_lookups("memory", "m", hits=3, misses=1, seconds=0.004)
    counts = metrics.statistics.of("m")
    assert (counts.cache_hit.count, counts.cache_hit.ns) == (3, 3_000_000)
    assert (counts.cache_miss.count, counts.cache_miss.ns) == (1, 1_000_000)
    assert _sample(metrics, "effnet_cache_lookups_total", backend="memory", model="m", result="hit") == 3
