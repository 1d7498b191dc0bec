"""The autoscaling signal (effnet_load_ratio and friends, service/metrics.py) read from the engine's own
/metrics text while real requests hold a real model: it rises with queued work, per model, and falls
back to zero once the work has drained."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service.core.engine import Engine
from service.metrics import Metrics
from tests.engine_calls import classify
from tests.tiny_model import png, tiny_settings
from tests.waiting import until


def samples(metrics: Metrics) -> dict[tuple[str, str], float]:
    """(sample name, model label) -> value, parsed from the exposition text a scrape gets."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("model", ""))] = sample.value
    return found


class GatedRunner:
    """The model's own runner, held at a gate so requests pile up behind the running batch."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(30)
        return self.inner.run(batch)  # type: ignore[attr-defined, no-any-return]


async def test_load_ratio_rises_with_queued_work_per_model_and_falls_when_drained(
    tiny_repository: Path,
) -> None:
    metrics = Metrics(process_metrics=False)
    engine = Engine(tiny_settings(tiny_repository, max_batch_size=2, instances=1), metrics)
    await engine.start()
    await engine.wait_loaded()
    try:
        # One request each so both models are known to the signal, then idle.
        await classify(engine, "tiny", [png((250, 0, 0))], top_k=1)
        await classify(engine, "noise", [png((0, 250, 0))], top_k=1)
        idle = samples(metrics)
        assert idle[("effnet_load_ratio", "tiny")] == 0 and idle[("effnet_load_ratio", "noise")] == 0
        assert idle[("effnet_pod_load_ratio", "")] == 0

        batcher = engine.ready_version("tiny").batcher
        assert batcher is not None
        runner = GatedRunner(batcher.runner)
        batcher.runner = runner
        first = asyncio.create_task(classify(engine, "tiny", [png((250, 0, 0))], top_k=1))
        await until(runner.entered.is_set, what="tiny's first batch running")
        held = samples(metrics)
        assert held[("effnet_in_flight_images", "tiny")] == 1
        assert held[("effnet_load_ratio", "tiny")] == 0.5  # 1 image over max batch 2 x 1 instance

        # Six more images queue behind the held batch: 7 in flight over a capacity of 2.
        queued = [
            asyncio.create_task(classify(engine, "tiny", [png((0, 0, 250))] * 2, top_k=1)) for _ in range(3)
        ]
        await until(lambda: batcher.queue_depth == 6, what="six images queued")
        loaded = samples(metrics)
        assert loaded[("effnet_in_flight_images", "tiny")] == 7
        assert loaded[("effnet_load_ratio", "tiny")] == 3.5
        assert loaded[("effnet_load_ratio", "noise")] == 0, "per model: the idle model stays at zero"
        assert loaded[("effnet_pod_load_ratio", "")] == 3.5, "the pod reads its busiest model"
        assert (
            loaded[("effnet_load_ratio_seconds_total", "tiny")]
            > idle[("effnet_load_ratio_seconds_total", "tiny")]
        )
        assert (
            loaded[("effnet_load_ratio_seconds_total", "noise")]
            == idle[("effnet_load_ratio_seconds_total", "noise")]
        )

        # The other model's work counts under its own name only.
        await classify(engine, "noise", [png((0, 250, 0))], top_k=1)
        assert samples(metrics)[("effnet_load_ratio", "tiny")] == 3.5

        runner.gate.set()
        outcomes = await asyncio.gather(first, *queued)
        assert [o.predictions[0][0].label for o in outcomes] == ["red", "blue", "blue", "blue"]
        drained = samples(metrics)
        assert drained[("effnet_in_flight_images", "tiny")] == 0
        assert drained[("effnet_load_ratio", "tiny")] == 0 and drained[("effnet_pod_load_ratio", "")] == 0
        integral = drained[("effnet_load_ratio_seconds_total", "tiny")]
        assert integral >= loaded[("effnet_load_ratio_seconds_total", "tiny")]
        assert samples(metrics)[("effnet_load_ratio_seconds_total", "tiny")] == integral, "idle adds nothing"
    finally:
        await engine.stop()


async def test_rejected_and_failed_requests_leave_no_load_behind(tiny_repository: Path) -> None:
    metrics = Metrics(process_metrics=False)
    engine = Engine(tiny_settings(tiny_repository, max_batch_size=1, instances=1, max_queue_size=1), metrics)
    await engine.start()
    await engine.wait_loaded()
    try:
        batcher = engine.ready_version("tiny").batcher
        assert batcher is not None
        runner = GatedRunner(batcher.runner)
        batcher.runner = runner
        running = asyncio.create_task(classify(engine, "tiny", [png((250, 0, 0))], top_k=1))
        await until(runner.entered.is_set, what="the batch running")
        waiting = asyncio.create_task(classify(engine, "tiny", [png((250, 0, 0))], top_k=1))
        await until(lambda: batcher.queue_depth == 1, what="the queue full")
        rejected = await asyncio.gather(
            *(classify(engine, "tiny", [png((250, 0, 0))], top_k=1) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in rejected)
        assert samples(metrics)[("effnet_in_flight_images", "tiny")] == 2, "503s are not load"
        waiting.cancel()
        await until(lambda: batcher.queue_depth == 0, what="the cancelled request dropped")
        assert samples(metrics)[("effnet_in_flight_images", "tiny")] == 1
        runner.gate.set()
        await running
        assert samples(metrics)[("effnet_load_ratio", "tiny")] == 0
    finally:
        await engine.stop()
