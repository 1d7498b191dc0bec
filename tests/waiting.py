"""Waiting on a condition instead of sleeping a fixed time: the wait ends as soon as the condition holds
(fast on a quiet machine) and fails with a message when it never does (not a flaky pass)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], within_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within_s:g} s")
        await asyncio.sleep(0.005)


def until_sync(condition: Callable[[], object], within_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within_s:g} s")
        time.sleep(0.01)
