"""Unit tests of the dynamic batcher with fake runners (no ONNX Runtime, no models)."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest

from service.errors import (
    BadImage,
    DeadlineExceeded,
    InferenceFailed,
    InvalidArgument,
    NotReady,
    Overloaded,
)
from service.runtime.batch_queue import Item
from service.runtime.batcher import Batcher, BatcherConfig, Encoded, ItemResult

MODEL = "fake"


def item(ident: int) -> np.ndarray:
    """A tiny uint8 image whose first two pixels spell `ident` (base 256)."""
    array = np.zeros((3, 2, 2), dtype=np.uint8)
    array[0, 0, 0] = ident % 256
    array[0, 0, 1] = ident // 256
    return array


def ident_of(batch: np.ndarray) -> list[int]:
    return [int(x) for x in batch[:, 0, 0, 0].astype(np.int64) + 256 * batch[:, 0, 0, 1].astype(np.int64)]


def row_ident(result: ItemResult) -> int:
    return int(result.outputs["logits"][0])


class FakeRunner:
    """Records each batch's item ids; optionally blocks until `release()`; fails on poisoned ids."""

    def __init__(
        self, gated: bool = False, poison: frozenset[int] = frozenset(), sleep_s: float = 0.0
    ) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.poison = poison
        self.sleep_s = sleep_s

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        ids = ident_of(batch)
        self.batches.append(ids)
        if not self.gate.wait(timeout=10):
            raise RuntimeError("test never released the runner")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.poison.intersection(ids):
            raise RuntimeError(f"poisoned batch {ids}")
        values = np.asarray(ids, dtype=np.float32)
        return {
            "logits": np.stack([values, values * 2, values * 3], axis=1),
            "probabilities": np.stack([-values, -values], axis=1),
        }

    def release(self) -> None:
        self.gate.set()

    @property
    def seen(self) -> list[int]:
        return [i for batch in self.batches for i in batch]

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


class RecordingObserver:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.dequeued: list[float] = []
        self.depths: list[int] = []
        self.expired = 0
        self.passes = 0
        self.lane = 0

    def batch_completed(
        self, model: str, size: int, inference_s: float, prepare_s: float = 0.0, output_s: float = 0.0
    ) -> None:
        assert model == MODEL and inference_s >= 0
        self.batches.append(size)

    def item_dequeued(self, model: str, queue_s: float) -> None:
        self.dequeued.append(queue_s)

    def queue_depth(self, model: str, depth: int) -> None:
        self.depths.append(depth)

    def items_expired(self, model: str, count: int) -> None:
        self.expired += count

    def priority_depth(self, model: str, priority: str, depth: int) -> None:
        assert priority in ("high", "normal", "low") and depth >= 0

    def aged_passes(self, model: str, count: int) -> None:
        self.passes += count

    def lane_batch(self, model: str) -> None:
        self.lane += 1


@asynccontextmanager
async def running(
    runner: FakeRunner, observer: RecordingObserver | None = None, **config: float
) -> AsyncIterator[Batcher]:
    batcher = Batcher(MODEL, runner, BatcherConfig(**config), observer)  # type: ignore[arg-type]
    batcher.start()
    try:
        async with asyncio.timeout(10):
            yield batcher
    finally:
        runner.release()
        await batcher.close()


async def settle() -> None:
    """Let every ready task run up to its next real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Wait for something another thread does (the runner entering a batch)."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        await asyncio.sleep(0.001)


async def start_blocker(
    batcher: Batcher, runner: FakeRunner, ident: int = 999
) -> asyncio.Task[list[ItemResult]]:
    """Occupy the (gated) runner with one item so that later submits queue up behind it."""
    task = asyncio.create_task(batcher.submit([item(ident)]))
    await until(lambda: len(runner.batches) == 1)
    return task


# --- latency when idle, max_queue_delay ---


async def test_lone_item_runs_at_once_with_zero_delay() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=8, max_queue_delay_s=0.0) as batcher:
        [result] = await batcher.submit([item(7)])
    assert runner.sizes == [1]
    assert row_ident(result) == 7
    assert result.batch_size == 1
    assert 0 <= result.queue_s < 0.5


async def test_lone_item_waits_for_the_delay_when_positive() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=8, max_queue_delay_s=0.2) as batcher:
        started = time.monotonic()
        [result] = await batcher.submit([item(1)])
        elapsed = time.monotonic() - started
    assert elapsed >= 0.19
    assert result.queue_s >= 0.19
    assert runner.sizes == [1]


async def test_delay_holds_a_non_full_batch_for_later_arrivals() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=8, max_queue_delay_s=0.5) as batcher:
        first = asyncio.create_task(batcher.submit([item(1)]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit([item(2)]))
        [r1], [r2] = await asyncio.gather(first, second)
    assert runner.batches == [[1, 2]]
    assert (row_ident(r1), row_ident(r2)) == (1, 2)
    assert r1.queue_s >= 0.49  # held from the oldest item's arrival


async def test_full_batch_does_not_wait_for_the_delay() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=4, max_queue_delay_s=30.0) as batcher:
        async with asyncio.timeout(5):
            results = await batcher.submit([item(i) for i in range(4)])
    assert runner.sizes == [4]
    assert [row_ident(r) for r in results] == [0, 1, 2, 3]


async def test_close_does_not_wait_out_the_delay() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=4, max_queue_delay_s=30.0) as batcher:
        task = asyncio.create_task(batcher.submit([item(5)]))
        await asyncio.sleep(0.05)
        assert runner.batches == []  # still held
        async with asyncio.timeout(5):
            await batcher.close()
        [result] = await task
    assert row_ident(result) == 5


# --- batch formation ---


async def test_items_queued_during_a_run_form_the_next_batches() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=4) as batcher:
        blocker = await start_blocker(batcher, runner, ident=100)
        tasks = [asyncio.create_task(batcher.submit([item(i)])) for i in range(6)]
        await settle()
        assert batcher.queue_depth == 6
        assert runner.sizes == [1]  # nothing runs while the runner is busy
        runner.release()
        results = await asyncio.gather(*tasks)
        await blocker
    assert runner.batches == [[100], [0, 1, 2, 3], [4, 5]]
    assert [row_ident(r) for [r] in results] == list(range(6))
    assert [r.batch_size for [r] in results] == [4, 4, 4, 4, 2, 2]
    assert batcher.batches_run == 3 and batcher.items_run == 7


async def test_results_are_routed_to_their_own_callers() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=3) as batcher:
        blocker = await start_blocker(batcher, runner)
        singles = [asyncio.create_task(batcher.submit([item(i)])) for i in range(5)]
        multi = asyncio.create_task(batcher.submit([item(i) for i in range(50, 54)]))
        await settle()
        runner.release()
        single_results = await asyncio.gather(*singles)
        multi_results = await multi
        await blocker
    for i, [result] in enumerate(single_results):
        np.testing.assert_array_equal(result.outputs["logits"], [i, 2 * i, 3 * i])
        np.testing.assert_array_equal(result.outputs["probabilities"], [-i, -i])
    assert [row_ident(r) for r in multi_results] == [50, 51, 52, 53]
    assert sorted(runner.seen) == sorted([999, *range(5), *range(50, 54)])


async def test_multi_item_request_spreads_over_batches_in_order() -> None:
    runner = FakeRunner()
    async with running(runner, max_batch_size=4) as batcher:
        results = await batcher.submit([item(i) for i in range(10)])
    assert runner.sizes == [4, 4, 2]
    assert [row_ident(r) for r in results] == list(range(10))


async def test_empty_request_returns_nothing() -> None:
    runner = FakeRunner()
    async with running(runner) as batcher:
        assert await batcher.submit([]) == []
    assert runner.batches == []


# --- bounded queue ---


async def test_full_queue_rejects_at_once_with_retry_after() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=1, max_queue_size=4) as batcher:
        blocker = await start_blocker(batcher, runner)
        queued = [asyncio.create_task(batcher.submit([item(i)])) for i in range(4)]
        await settle()
        assert batcher.queue_depth == 4
        with pytest.raises(Overloaded) as caught:
            await batcher.submit([item(50)])
        assert caught.value.retry_after >= 0.1
        assert batcher.items_rejected == 1
        runner.release()
        await asyncio.gather(blocker, *queued)
    assert 50 not in runner.seen


async def test_multi_item_admission_is_atomic() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=1, max_queue_size=4) as batcher:
        blocker = await start_blocker(batcher, runner)
        first = asyncio.create_task(batcher.submit([item(1), item(2)]))
        await settle()
        with pytest.raises(Overloaded):
            await batcher.submit([item(10), item(11), item(12)])
        assert batcher.queue_depth == 2  # none of the three was queued
        second = asyncio.create_task(batcher.submit([item(3), item(4)]))  # exactly fills the queue
        await settle()
        assert batcher.queue_depth == 4
        runner.release()
        await asyncio.gather(blocker, first, second)
    assert runner.seen == [999, 1, 2, 3, 4]
    assert batcher.items_rejected == 3


async def test_request_larger_than_the_queue_is_invalid() -> None:
    async with running(FakeRunner(), max_queue_size=2) as batcher:
        with pytest.raises(InvalidArgument):
            await batcher.submit([item(i) for i in range(3)])


async def test_items_of_the_wrong_shape_or_dtype_are_refused_before_queueing() -> None:
    runner = FakeRunner()
    batcher = Batcher(MODEL, runner, BatcherConfig(), item_shape=(3, 2, 2))
    batcher.start()
    try:
        with pytest.raises(InvalidArgument, match="input 1"):
            await batcher.submit([item(1), np.zeros((3, 4, 4), np.uint8)])
        with pytest.raises(InvalidArgument):
            await batcher.submit([item(1).astype(np.float32)])
        assert batcher.queue_depth == 0
        [result] = await batcher.submit([item(2)])
    finally:
        await batcher.close()
    assert row_ident(result) == 2
    assert runner.seen == [2]


async def test_retry_after_follows_measured_inference_time() -> None:
    runner = FakeRunner(sleep_s=0.02)
    async with running(runner, max_batch_size=1, max_queue_size=100) as batcher:
        await batcher.submit([item(1)])
        assert batcher.retry_after(50) >= 50 * 0.015  # about 50 items of 20 ms each to wait for
        assert batcher.retry_after(1) >= 0.1


# --- deadlines and cancellation ---


async def test_deadline_passing_while_queued_answers_at_once_and_never_runs() -> None:
    runner = FakeRunner(gated=True)
    observer = RecordingObserver()
    async with running(runner, observer, max_batch_size=4) as batcher:
        blocker = await start_blocker(batcher, runner)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit([item(1), item(2)], deadline=time.monotonic() + 0.05)
        assert not runner.gate.is_set()  # answered while the runner was still busy
        assert batcher.queue_depth == 0
        later = asyncio.create_task(batcher.submit([item(3)], deadline=time.monotonic() + 30))
        await settle()
        runner.release()
        await blocker
        [result] = await later
    assert row_ident(result) == 3
    assert runner.seen == [999, 3]
    assert batcher.items_expired == 2 and observer.expired == 2


class Answered:
    """An answer for Batcher.enqueue: what the batch called, once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def done(self) -> bool:
        return bool(self.calls)

    def set_result(self, result: object) -> None:
        self.calls.append(("result", result))

    def set_exception(self, exception: BaseException) -> None:
        self.calls.append(("error", exception))

    def cancel(self) -> bool:
        self.calls.append(("cancelled", None))
        return True


async def test_enqueued_items_are_answered_through_their_answer_and_expire_by_one_timer() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=4) as batcher:
        blocker = await start_blocker(batcher, runner)
        now = time.monotonic()
        answers = [Answered() for _ in range(4)]
        deadlines = [now + 0.05, now + 0.1, now + 30, now + 30]
        items = [Item(item(i), a, now, d) for i, (a, d) in enumerate(zip(answers, deadlines, strict=True))]
        batcher.enqueue(items)
        assert batcher.queue_depth == 4
        await until(lambda: answers[1].done(), limit_s=2)  # the timer woke twice, the runner still busy
        assert [a.calls[0][0] for a in answers[:2]] == ["error", "error"]
        assert all(isinstance(a.calls[0][1], DeadlineExceeded) for a in answers[:2])
        assert items[0].array.size == 0  # an expired item lets go of its row while it waits as a tombstone
        batcher.drop([items[3]])
        assert answers[3].calls == [("cancelled", None)] and batcher.queue_depth == 1
        runner.release()
        await blocker
        await until(lambda: answers[2].done())
    ((kind, result),) = answers[2].calls
    assert kind == "result" and row_ident(result) == 2  # type: ignore[arg-type]
    assert runner.seen == [999, 2]
    assert all(len(a.calls) == 1 for a in answers)


async def test_enqueue_refuses_while_closing() -> None:
    runner = FakeRunner()
    batcher = Batcher(MODEL, runner, BatcherConfig())  # type: ignore[arg-type]
    with pytest.raises(NotReady):
        batcher.enqueue([Item(item(1), Answered(), time.monotonic(), None)])  # not started
    batcher.start()
    await batcher.close()
    with pytest.raises(NotReady):
        batcher.enqueue([Item(item(1), Answered(), time.monotonic(), None)])


async def test_deadline_already_passed_is_rejected_without_queueing() -> None:
    runner = FakeRunner()
    async with running(runner) as batcher:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit([item(1)], deadline=time.monotonic() - 1)
        assert batcher.queue_depth == 0
    assert runner.batches == []
    assert batcher.items_expired == 1


async def test_cancelled_caller_is_dropped_and_frees_its_slot() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=4, max_queue_size=2) as batcher:
        blocker = await start_blocker(batcher, runner)
        doomed = asyncio.create_task(batcher.submit([item(1), item(2)]))
        await settle()
        assert batcher.queue_depth == 2
        doomed.cancel()
        await settle()
        assert doomed.cancelled()
        assert batcher.queue_depth == 0
        assert batcher.items_cancelled == 2
        kept = asyncio.create_task(batcher.submit([item(3), item(4)]))  # fits again
        await settle()
        runner.release()
        await blocker
        results = await kept
    assert [row_ident(r) for r in results] == [3, 4]
    assert runner.batches == [[999], [3, 4]]


async def test_cancelling_a_running_item_does_not_break_its_batch() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=2) as batcher:
        a = asyncio.create_task(batcher.submit([item(1)]))
        await until(lambda: len(runner.batches) == 1)
        a.cancel()
        await settle()
        runner.release()
        [after] = await batcher.submit([item(2)])
    assert a.cancelled()
    assert row_ident(after) == 2
    assert runner.batches == [[1], [2]]


# --- failures ---


async def test_failing_batch_fails_only_its_callers(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner(gated=True, poison=frozenset({1}))
    async with running(runner, max_batch_size=2) as batcher:
        blocker = await start_blocker(batcher, runner)
        tasks = [asyncio.create_task(batcher.submit([item(i)])) for i in range(1, 5)]
        await settle()
        with caplog.at_level(logging.ERROR, logger="service.runtime.batcher"):
            runner.release()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        [after] = await batcher.submit([item(9)])  # the loop survived
        await blocker
    assert runner.batches == [[999], [1, 2], [3, 4], [9]]
    failed = outcomes[:2]
    assert all(isinstance(o, InferenceFailed) for o in failed)
    assert failed[0] is not failed[1]
    error_id = re.search(r"error id ([0-9a-f]{8})", str(failed[0]))
    assert error_id is not None
    assert any(error_id.group(1) in r.getMessage() and r.exc_info for r in caplog.records)
    assert [row_ident(r) for [r] in outcomes[2:]] == [3, 4]  # type: ignore[misc]
    assert row_ident(after) == 9
    assert batcher.batches_failed == 1


async def test_partially_failed_multi_item_request_raises() -> None:
    runner = FakeRunner(poison=frozenset({2}))
    async with running(runner, max_batch_size=1) as batcher:
        with pytest.raises(InferenceFailed):
            await batcher.submit([item(1), item(2), item(3)])
        assert batcher.queue_depth == 0
        [after] = await batcher.submit([item(4)])
    assert row_ident(after) == 4


async def test_output_without_one_row_per_item_fails_the_batch() -> None:
    class Broken:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"logits": np.zeros((1, 3), dtype=np.float32)}

    runner = FakeRunner()
    async with running(runner, max_batch_size=2, max_queue_delay_s=0.5) as batcher:
        batcher.runner = Broken()
        with pytest.raises(InferenceFailed):
            await batcher.submit([item(1), item(2)])


# --- shutdown ---


async def test_submit_before_start_and_after_close_is_not_ready() -> None:
    batcher = Batcher(MODEL, FakeRunner(), BatcherConfig())
    with pytest.raises(NotReady):
        await batcher.submit([item(1)])
    batcher.start()
    await batcher.close()
    with pytest.raises(NotReady, match="shutting down"):
        await batcher.submit([item(1)])


async def test_close_drains_what_is_queued() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=2) as batcher:
        blocker = await start_blocker(batcher, runner)
        tasks = [asyncio.create_task(batcher.submit([item(i)])) for i in range(3)]
        await settle()
        closing = asyncio.create_task(batcher.close())
        await settle()
        assert not closing.done()
        with pytest.raises(NotReady):
            await batcher.submit([item(50)])
        runner.release()
        await closing
        results = await asyncio.gather(*tasks)
        await blocker
    assert [row_ident(r) for [r] in results] == [0, 1, 2]
    assert runner.batches == [[999], [0, 1], [2]]


async def test_close_without_drain_fails_queued_items() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=2) as batcher:
        blocker = await start_blocker(batcher, runner)
        tasks = [asyncio.create_task(batcher.submit([item(i)])) for i in range(3)]
        await settle()
        closing = asyncio.create_task(batcher.close(drain=False))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, NotReady) for o in outcomes)
        assert batcher.queue_depth == 0
        runner.release()
        await closing
        [result] = await blocker  # the running batch still completes
    assert row_ident(result) == 999
    assert runner.batches == [[999]]


# --- observer ---


async def test_observer_sees_batches_dequeues_and_depth() -> None:
    runner = FakeRunner(gated=True)
    observer = RecordingObserver()
    async with running(runner, observer, max_batch_size=4) as batcher:
        blocker = await start_blocker(batcher, runner)
        tasks = [asyncio.create_task(batcher.submit([item(i)])) for i in range(5)]
        await settle()
        assert observer.depths[-1] == 5
        runner.release()
        await asyncio.gather(blocker, *tasks)
    assert observer.batches == [1, 4, 1]
    assert len(observer.dequeued) == 6 and min(observer.dequeued) >= 0
    assert observer.depths[-1] == 0


# --- stress ---


async def test_stress_every_submit_gets_exactly_one_outcome() -> None:
    rng = random.Random(1234)
    runner = FakeRunner(sleep_s=0.0005)
    outcomes: dict[int, object] = {}
    requests: dict[int, list[int]] = {}

    async def client(batcher: Batcher, request: int, ids: list[int], deadline: float | None) -> None:
        await asyncio.sleep(rng.random() * 0.1)
        if request in to_cancel:  # somewhere between queued, running and done
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_later(rng.uniform(0.0, 0.01), task.cancel)
        try:
            result = await batcher.submit([item(i) for i in ids], deadline=deadline)
        except (DeadlineExceeded, Overloaded, InferenceFailed) as exc:
            assert request not in outcomes
            outcomes[request] = exc
        else:
            assert request not in outcomes
            outcomes[request] = result

    to_cancel = set(rng.sample(range(500), 80))
    async with running(runner, max_batch_size=4, max_queue_size=32, max_queue_delay_s=0.002) as batcher:
        next_id = 0
        tasks: list[asyncio.Task[None]] = []
        for request in range(500):
            ids = list(range(next_id, next_id + rng.choice([1, 1, 1, 2, 3])))
            next_id += len(ids)
            requests[request] = ids
            deadline = time.monotonic() + rng.uniform(0.0, 0.1) if rng.random() < 0.3 else None
            tasks.append(asyncio.create_task(client(batcher, request, ids, deadline)))
        await asyncio.gather(*tasks, return_exceptions=True)
        assert batcher.queue_depth == 0

    seen = runner.seen
    assert len(seen) == len(set(seen)), "an item ran twice"
    assert batcher.items_run == len(seen)
    for request, ids in requests.items():
        outcome = outcomes.get(request)
        if tasks[request].cancelled():
            assert outcome is None
            continue
        assert outcome is not None, f"request {request} got no outcome"
        if isinstance(outcome, list):
            assert [row_ident(r) for r in outcome] == ids
            assert set(ids) <= set(seen)
        elif isinstance(outcome, Overloaded):
            assert not set(ids) & set(seen)
        elif isinstance(outcome, DeadlineExceeded) and len(ids) == 1:
            assert ids[0] not in seen
    kinds = {type(o).__name__ for o in outcomes.values()}
    assert "list" in kinds  # the run was not all failures


async def test_instances_run_batches_side_by_side() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=2, instances=2) as batcher:
        first = [asyncio.create_task(batcher.submit([item(1)]))]
        await until(lambda: runner.sizes == [1])
        # the first runner is busy (gated); the second takes the next item at once
        first.append(asyncio.create_task(batcher.submit([item(2)])))
        await until(lambda: runner.sizes == [1, 1])
        third = [asyncio.create_task(batcher.submit([item(i)])) for i in (3, 4)]
        await settle()
        assert len(runner.batches) == 2, "a third batch started while both runners were busy"
        runner.release()
        results = await asyncio.gather(*first, *third)
        assert [row_ident(r[0]) for r in results] == [1, 2, 3, 4]
        assert runner.batches == [[1], [2], [3, 4]]


async def test_close_waits_for_batches_still_running_on_other_instances() -> None:
    runner = FakeRunner(gated=True)
    batcher = Batcher(MODEL, runner, BatcherConfig(max_batch_size=1, instances=2))
    batcher.start()
    calls = [asyncio.create_task(batcher.submit([item(i)])) for i in (1, 2)]
    await until(lambda: len(runner.batches) == 2)
    closing = asyncio.create_task(batcher.close())
    await settle()
    assert not closing.done()
    runner.release()
    await asyncio.wait_for(closing, 5)
    assert [row_ident(r[0]) for r in await asyncio.gather(*calls)] == [1, 2]


# --- encoded items: prepared by the thread that runs their batch ---


def encoded(ident: int, threads: list[str] | None = None) -> Encoded:
    """An item whose bytes are its id; preparing it records the thread that did, and fails for an id
    below zero (a bad image) or of 666 (a bug in preparation)."""

    def prepare(data: bytes) -> np.ndarray:
        if threads is not None:
            threads.append(threading.current_thread().name)
        value = int(data.decode())
        if value < 0:
            raise BadImage(f"cannot decode image {value}")
        if value == 666:
            raise ZeroDivisionError("a bug")
        time.sleep(0.002)
        return item(value)

    return Encoded(str(ident).encode(), prepare)


async def test_encoded_items_are_prepared_in_the_batch_thread_then_run() -> None:
    runner, threads = FakeRunner(), []
    async with running(runner, max_batch_size=4) as batcher:
        results = await batcher.submit([encoded(i, threads) for i in (5, 6, 7)])
    assert [row_ident(r) for r in results] == [5, 6, 7]
    assert runner.seen == [5, 6, 7]
    assert threads and all(name.startswith(f"batcher-{MODEL}") for name in threads)
    assert all(r.prepare_s >= 0.002 for r in results)


async def test_an_image_that_fails_to_prepare_fails_only_its_own_caller() -> None:
    runner = FakeRunner(gated=True)
    async with running(runner, max_batch_size=8) as batcher:
        blocker = await start_blocker(batcher, runner)
        good = asyncio.create_task(batcher.submit([encoded(1), item(2)]))
        bad = asyncio.create_task(batcher.submit([encoded(-3)]))
        await settle()
        runner.release()
        assert [row_ident(r) for r in await good] == [1, 2]
        with pytest.raises(BadImage, match="cannot decode image -3"):
            await bad
        await blocker
    assert runner.batches[1] == [1, 2]  # shared the batch; the bad image never reached the run
    assert batcher.batches_failed == 0


async def test_a_bug_in_preparation_is_logged_with_an_id_and_fails_its_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = FakeRunner()
    with caplog.at_level(logging.ERROR):
        async with running(runner) as batcher:
            with pytest.raises(
                InferenceFailed, match=r"preprocessing failed on model 'fake' \(error id (\w+)\)"
            ):
                await batcher.submit([encoded(666)])
            assert [row_ident(r) for r in await batcher.submit([encoded(4)])] == [4]
    assert "preprocessing failed model=fake" in caplog.text and "ZeroDivisionError" in caplog.text
    assert runner.seen == [4]


async def test_a_batch_of_only_failed_images_runs_nothing() -> None:
    runner = FakeRunner()
    async with running(runner) as batcher:
        with pytest.raises(BadImage):
            await batcher.submit([encoded(-1), encoded(-2)])
        assert [row_ident(r) for r in await batcher.submit([encoded(9)])] == [9]
    assert runner.batches == [[9]]
