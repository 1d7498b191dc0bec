"""High-priority images do not pay for low-priority batches: a batch holding them takes only as many
others as its measured cost allows (batch_costs.py), aged items still pass in their share (low never
starves), and a real batcher whose every instance is busy with low work runs a high item on its lane at
once, and counts it."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.metrics import Metrics
from service.runtime.batch_costs import BatchCosts
from service.runtime.batch_queue import BatchQueue, Item
from service.runtime.batcher import Batcher, BatcherConfig
from service.runtime.priorities import Priority
from tests.waiting import until


def test_fill_follows_measured_costs_and_the_setting_where_unmeasured() -> None:
    cpu = BatchCosts(max_batch_size=4, slack=1.25, unmeasured_fill=1)
    assert cpu.fill(1) == 1  # nothing measured: the setting
    for size, seconds in ((1, 0.010), (2, 0.019), (3, 0.028), (4, 0.037)):
        cpu.observe(size, seconds)
    assert cpu.fill(1) == 0  # every extra image costs about one more
    assert cpu.fill(4) == 0  # a full batch has no room

    gpu = BatchCosts(max_batch_size=8, slack=1.25, unmeasured_fill=0)
    for size in range(1, 6):
        gpu.observe(size, 0.010 + 0.0005 * size)
    gpu.observe(6, 0.030)
    assert gpu.fill(1) == 4  # sizes 2-5 cost within 25 % of one, size 6 does not
    assert gpu.fill(2) == 3
    gpu.observe(6, 0.030)
    assert gpu.seconds(6) == pytest.approx(0.030)
    with pytest.raises(ValueError, match="slack"):
        BatchCosts(4, 0.5, 0)


async def test_a_batch_with_high_items_takes_only_its_fill_of_others() -> None:
    loop = asyncio.get_running_loop()
    queue = BatchQueue("m", 64, None, aging_s=10.0)
    now = time.monotonic()

    def item(tag: int, priority: Priority, age_s: float = 0.0) -> Item:
        return Item(np.array([tag]), loop.create_future(), now - age_s, None, priority)

    queue.add(
        [item(1, Priority.LOW), item(2, Priority.NORMAL), item(3, Priority.HIGH), item(4, Priority.LOW)]
    )
    assert [int(i.array[0]) for i in queue.take(4, fill=lambda high: 0)] == [3]
    queue.add([item(5, Priority.HIGH)])
    asked: list[int] = []

    def one_more(high: int) -> int:
        asked.append(high)
        return 1

    taken = queue.take(4, fill=one_more)
    assert [int(i.array[0]) for i in taken] == [5, 2] and asked == [1]
    # No high item waiting: the batch fills as before.
    assert [int(i.array[0]) for i in queue.take(4, fill=lambda high: 0)] == [1, 4]

    # An aged item passes (in its share) and does not count against the fill: low never starves.
    queue.add([item(6, Priority.HIGH), item(7, Priority.LOW, age_s=11.0), item(8, Priority.LOW)])
    assert [int(i.array[0]) for i in queue.take(4, fill=lambda high: 0)] == [7, 6]
    assert [int(i.array[0]) for i in queue.take(4, fill=lambda high: 0)] == [8]

    # The lane's batches: high items alone, aged others or not.
    queue.add([item(9, Priority.LOW, age_s=11.0), item(10, Priority.HIGH), item(11, Priority.HIGH)])
    assert [int(i.array[0]) for i in queue.take(4, high_only=True)] == [10, 11]
    assert queue.take(4, high_only=True) == [] and queue.depth == 1


class LowHeldRunner:
    """Rows whose first pixel is below 100 wait for `release`; others run at once. Records batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if int(batch[0][0]) < 100:
            self.release.wait(10)
        self.batches.append([int(row[0]) for row in batch])
        return {"out": batch.astype(np.float32)}


async def test_a_high_item_runs_on_the_lane_while_every_instance_holds_low_work() -> None:
    runner = LowHeldRunner()
    config = BatcherConfig(max_batch_size=2, max_queue_size=16, instances=1, priority_aging_s=60)
    metrics = Metrics(process_metrics=False)
    batcher = Batcher("m", runner, config, metrics)
    batcher.start()
    low: list[asyncio.Task[object]] = []
    try:
        low.append(asyncio.create_task(batcher.submit([np.array([1])], priority=Priority.LOW)))
        await until(lambda: batcher.batches_run == 1)  # the one instance holds a low batch
        low.append(asyncio.create_task(batcher.submit([np.array([2]), np.array([3])], priority=Priority.LOW)))
        await until(lambda: batcher.queue_depth == 2)
        high = await asyncio.wait_for(batcher.submit([np.array([100])], priority=Priority.HIGH), 5)
        assert high[0].batch_size == 1 and batcher.lane_batches == 1
        assert metrics.registry.get_sample_value("effnet_priority_lane_batches_total", {"model": "m"}) == 1
        assert batcher.queue_depth == 2  # the lane took no low work
        runner.release.set()
        await asyncio.wait_for(asyncio.gather(*low), 10)
    finally:
        runner.release.set()
        await batcher.close()
    assert runner.batches == [[100], [1], [2, 3]]


async def test_without_the_lane_a_high_item_waits_for_a_runner() -> None:
    runner = LowHeldRunner()
    config = BatcherConfig(max_batch_size=2, max_queue_size=16, instances=1, high_lane=False)
    batcher = Batcher("m", runner, config)
    batcher.start()
    try:
        held = asyncio.create_task(batcher.submit([np.array([1])], priority=Priority.LOW))
        await until(lambda: batcher.batches_run == 1)
        high = asyncio.create_task(batcher.submit([np.array([100])], priority=Priority.HIGH))
        await asyncio.sleep(0.2)
        assert not high.done() and batcher.queue_depth == 1 and batcher.lane_batches == 0
        runner.release.set()
        await asyncio.wait_for(asyncio.gather(held, high), 10)
    finally:
        runner.release.set()
        await batcher.close()
    assert runner.batches == [[1], [100]]


class CostlyRunner:
    """A batch of n rows takes `fixed_s + per_row_s * n` (sleeping: what a run costs its thread)."""

    def __init__(self, fixed_s: float, per_row_s: float) -> None:
        self.fixed_s, self.per_row_s = fixed_s, per_row_s

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.fixed_s + self.per_row_s * len(batch))
        return {"out": batch.astype(np.float32)}


@pytest.mark.parametrize(("fixed_s", "per_row_s", "fill"), [(0.0, 0.02, 0), (0.06, 0.001, 3)])
async def test_the_batcher_measures_what_each_batch_size_costs(
    fixed_s: float, per_row_s: float, fill: int
) -> None:
    """A CPU-like model (each image one more share) gives high images no company; a GPU-like one (a
    batch of four costs about one) lets the batch fill up."""
    batcher = Batcher("m", CostlyRunner(fixed_s, per_row_s), BatcherConfig(max_batch_size=4, instances=1))
    batcher.start()
    try:
        for size in (1, 2, 3, 4):
            await batcher.submit([np.array([i]) for i in range(size)])
    finally:
        await batcher.close()
    assert all(batcher.costs.seconds(size) is not None for size in (1, 2, 3, 4))
    assert batcher.costs.fill(1) == fill
