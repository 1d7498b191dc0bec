"""The preprocessing pool hands images to its threads in priority order: while its one thread is busy,
a high image queued after low ones is decoded first; an aged image goes before younger ones, within
its share."""

from __future__ import annotations

import asyncio
import threading

from service.preprocess.pool import PreprocessPool
from tests.waiting import until

HIGH, NORMAL, LOW = 0, 1, 2


async def test_waiting_images_run_high_first_then_aged_first() -> None:
    pool = PreprocessPool(workers=1, max_pending=64, aging_s=60.0)
    gate = threading.Event()
    order: list[str] = []

    def work(tag: str) -> str:
        if tag == "first":
            gate.wait(10)
        order.append(tag)
        return tag

    try:
        first = asyncio.create_task(pool.run(work, [("first",)]))
        await until(lambda: pool.backlog == 1)
        tasks = [
            asyncio.create_task(pool.run(work, [(tag,)], priority))
            for tag, priority in (("low-1", LOW), ("low-2", LOW), ("normal", NORMAL), ("high", HIGH))
        ]
        await until(lambda: pool.backlog == 5)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *tasks), 10)
    finally:
        gate.set()
        pool.close()
    assert [r[0][0] for r in results] == ["first", "low-1", "low-2", "normal", "high"]
    assert order == ["first", "high", "normal", "low-1", "low-2"]


async def test_aged_images_pass_younger_high_ones_within_their_share() -> None:
    """A bulk job's backlog has aged: it still moves, but fresh high images are not put behind all of it."""
    pool = PreprocessPool(workers=1, max_pending=64, aging_s=0.5)
    gate = threading.Event()
    order: list[str] = []

    def work(tag: str) -> None:
        if tag == "first":
            gate.wait(10)
        order.append(tag)

    try:
        first = asyncio.create_task(pool.run(work, [("first",)]))
        await until(lambda: pool.backlog == 1)
        lows = [asyncio.create_task(pool.run(work, [(f"low-{n}",)], LOW)) for n in (1, 2, 3)]
        await until(lambda: pool.backlog == 4)
        await asyncio.sleep(0.6)  # the low images have aged
        highs = [asyncio.create_task(pool.run(work, [(f"high-{n}",)], HIGH)) for n in range(1, 6)]
        await until(lambda: pool.backlog == 9)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *lows, *highs), 10)
    finally:
        gate.set()
        pool.close()
    # One pass in four images handed out: a low image passes, then three high ones go first.
    expected = ["first", "low-1", "high-1", "high-2", "high-3", "low-2", "high-4", "high-5", "low-3"]
    assert order == expected


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    pool = PreprocessPool(workers=1, max_pending=64)
    gate = threading.Event()

    def work(tag: str) -> str:
        if tag == "first":
            gate.wait(10)
        return tag

    try:
        first = asyncio.create_task(pool.run(work, [("first",)]))
        await until(lambda: pool.backlog == 1)
        gone = asyncio.create_task(pool.run(work, [("gone",)], HIGH))
        kept = asyncio.create_task(pool.run(work, [("kept",)], LOW))
        await until(lambda: pool.backlog == 3)
        gone.cancel()
        gate.set()
        assert (await asyncio.wait_for(kept, 10))[0][0] == "kept"
        await first
    finally:
        gate.set()
        pool.close()
    assert pool.backlog == 0


async def test_the_lane_decodes_high_images_while_every_thread_holds_low_ones() -> None:
    pool = PreprocessPool(workers=1, max_pending=64, aging_s=60.0, high_lane=True)
    gate = threading.Event()
    order: list[str] = []

    def work(tag: str) -> str:
        if tag.startswith("low"):
            gate.wait(10)
        order.append(tag)
        return tag

    try:
        held = asyncio.create_task(pool.run(work, [("low-held",)], LOW))
        await until(lambda: pool.backlog == 1)
        waiting = asyncio.create_task(pool.run(work, [("low-waiting",)], LOW))
        await until(lambda: pool.backlog == 2)
        # The one thread holds a low image and another waits for it: high images pass on the lane,
        # two of them one after the other.
        both = await asyncio.wait_for(pool.run(work, [("high-1",), ("high-2",)], HIGH), 5)
        assert [tag for tag, _ in both] == ["high-1", "high-2"]
        assert not held.done() and not waiting.done()  # the lane took no low image
        gate.set()
        await asyncio.wait_for(asyncio.gather(held, waiting), 10)
    finally:
        gate.set()
        pool.close()
    assert order == ["high-1", "high-2", "low-held", "low-waiting"]
