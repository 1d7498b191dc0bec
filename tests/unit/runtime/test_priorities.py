"""Priorities in the batch queue: high before normal before low, aged items ahead within their share,
low never fills the last quarter of the queue; and a real batcher running a held-up queue in that order."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.errors import InvalidArgument, Overloaded
from service.metrics import Metrics
from service.runtime.batch_queue import BatchQueue, Item
from service.runtime.batcher import Batcher, BatcherConfig
from service.runtime.priorities import Priority, parse_priority, queue_limit
from tests.waiting import until


def test_parse_priority_names_integers_and_errors() -> None:
    assert parse_priority(None) is Priority.NORMAL
    assert parse_priority("") is Priority.NORMAL
    assert parse_priority("HIGH") is Priority.HIGH
    assert parse_priority(" low ") is Priority.LOW
    # Triton's integers: 0 the default, 1 the highest.
    assert [parse_priority(n) for n in (0, 1, 2, 3, 9)] == [
        Priority.NORMAL, Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.LOW,
    ]  # fmt: skip
    for bad in ("urgent", True, -1, 1.5):
        with pytest.raises(InvalidArgument, match="priority must be one of high, normal, low"):
            parse_priority(bad)


def test_low_may_not_fill_the_last_quarter() -> None:
    assert queue_limit(64, Priority.LOW) == 48
    assert queue_limit(64, Priority.NORMAL) == queue_limit(64, Priority.HIGH) == 64
    assert queue_limit(1, Priority.LOW) == 1


async def test_take_orders_by_level_then_age_and_aged_items_go_first() -> None:
    loop = asyncio.get_running_loop()
    queue = BatchQueue("m", 64, None, aging_s=10.0)
    now = time.monotonic()

    def item(tag: int, priority: Priority, age_s: float = 0.0) -> Item:
        return Item(np.array([tag]), loop.create_future(), now - age_s, None, priority)

    queue.add([item(1, Priority.LOW), item(2, Priority.NORMAL), item(3, Priority.LOW)])
    queue.add([item(4, Priority.HIGH), item(5, Priority.NORMAL), item(6, Priority.HIGH)])
    assert queue.depths == {Priority.HIGH: 2, Priority.NORMAL: 2, Priority.LOW: 2}
    assert [int(i.array[0]) for i in queue.take(4)] == [4, 6, 2, 5]
    assert [int(i.array[0]) for i in queue.take(4)] == [1, 3]
    assert queue.depth == 0 and queue.depths == {Priority.HIGH: 0, Priority.NORMAL: 0, Priority.LOW: 0}

    # The oldest aged item passes a fresh high one; one pass in four items handed out, so the next aged
    # item keeps its level's place.
    queue.add(
        [item(7, Priority.HIGH), item(8, Priority.LOW, age_s=12.0), item(9, Priority.NORMAL, age_s=11.0)]
    )
    assert [int(i.array[0]) for i in queue.take(3)] == [8, 7, 9]


async def test_under_saturation_aged_items_pass_high_ones_only_in_their_share() -> None:
    """Every queued low item has aged (a bulk job's backlog): fresh high items still make up three
    quarters of each batch instead of waiting behind the whole backlog, and low still moves."""
    loop = asyncio.get_running_loop()
    metrics = Metrics(process_metrics=False)
    queue = BatchQueue("m", 64, metrics, aging_s=1.0)
    now = time.monotonic()
    backlog = [
        Item(np.array([100 + n]), loop.create_future(), now - 5 + n / 100, None, Priority.LOW)
        for n in range(20)
    ]
    queue.add(backlog)
    queue.add([Item(np.array([n]), loop.create_future(), now, None, Priority.HIGH) for n in range(1, 9)])
    batches = [[int(i.array[0]) for i in queue.take(4)] for _ in range(3)]
    assert batches == [[100, 1, 2, 3], [101, 4, 5, 6], [102, 7, 8, 103]]
    assert queue.aged_share.passes == 3
    assert metrics.registry.get_sample_value("effnet_priority_aged_passes_total", {"model": "m"}) == 3
    # With no high item left, the backlog goes in its own order, a whole batch at a time.
    assert [int(i.array[0]) for i in queue.take(4)] == [104, 105, 106, 107]
    # A batch holding a high item, which may carry no other (a CPU's fill): the aged pass, and not the
    # backlog, even though all of it has aged.
    queue.add([Item(np.array([9]), loop.create_future(), now, None, Priority.HIGH)])
    assert [int(i.array[0]) for i in queue.take(8, fill=lambda high: 0)] == [108, 9]


async def test_dropped_and_expired_items_leave_their_level_count() -> None:
    loop = asyncio.get_running_loop()
    queue = BatchQueue("m", 64, None)
    now = time.monotonic()
    low = [Item(np.array([i]), loop.create_future(), now, None, Priority.LOW) for i in range(3)]
    high = [Item(np.array([9]), loop.create_future(), now, now - 1, Priority.HIGH)]
    queue.add(low + high)
    queue.drop(low[:2])
    assert queue.depths[Priority.LOW] == 1 and queue.depth == 2
    taken = queue.take(4)  # the high item's deadline has passed: expired, never taken
    assert [int(i.array[0]) for i in taken] == [2]
    assert queue.items_expired == 1 and queue.depth == 0 and queue.depths[Priority.HIGH] == 0


class GatedRunner:
    """Records the first pixel of each row it runs; the first batch waits for `release`."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.gate = threading.Event()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.order.extend(int(row[0]) for row in batch)
        return {"out": batch.astype(np.float32)}


async def test_a_held_up_batcher_runs_high_first_and_low_last() -> None:
    runner = GatedRunner()
    config = BatcherConfig(max_batch_size=2, max_queue_size=16, priority_aging_s=60, high_lane=False)
    batcher = Batcher("m", runner, config)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit([np.array([0])], priority=Priority.LOW))
        await until(lambda: batcher.batches_run == 1)  # the runner holds the first batch
        levels = [Priority.LOW, Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.LOW, Priority.HIGH]
        waiting = [
            asyncio.create_task(batcher.submit([np.array([tag])], priority=level))
            for tag, level in enumerate(levels, start=1)
        ]
        await until(lambda: batcher.queue_depth == len(levels))
        runner.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), 10)
    finally:
        runner.gate.set()
        await batcher.close()
    assert runner.order == [0, 4, 6, 3, 1, 2, 5]


async def test_low_is_refused_when_three_quarters_full_while_high_still_fits() -> None:
    runner = GatedRunner()
    batcher = Batcher("m", runner, BatcherConfig(max_batch_size=1, max_queue_size=4, high_lane=False))
    batcher.start()
    tasks = []
    try:
        tasks.append(asyncio.create_task(batcher.submit([np.array([0])])))  # held by the runner
        await until(lambda: batcher.batches_run == 1)
        tasks += [
            asyncio.create_task(batcher.submit([np.array([i])], priority=Priority.LOW)) for i in (1, 2, 3)
        ]
        await until(lambda: batcher.queue_depth == 3)
        assert not batcher.room(1, Priority.LOW) and batcher.room(1, Priority.HIGH)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit([np.array([4])], priority=Priority.LOW)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        tasks.append(asyncio.create_task(batcher.submit([np.array([5])], priority=Priority.HIGH)))
        await until(lambda: batcher.queue_depth == 4)
        with pytest.raises(Overloaded):
            await batcher.submit([np.array([6])], priority=Priority.HIGH)
        runner.gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        runner.gate.set()
        await batcher.close()
    assert runner.order == [0, 5, 1, 2, 3]
