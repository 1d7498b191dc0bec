"""serve_stream (service/api/grpc/calls.py): the bounded stream of many requests that ClassifyStream and
V2's ModelStreamInfer share. A fake context stands in for gRPC's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from service.api.grpc.calls import serve_stream


class _Context:
    """Records what the handler writes; `open` gates the writes (a client that does not read)."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.open = asyncio.Event()

    async def write(self, message: str) -> None:
        await self.open.wait()
        self.written.append(message)


async def _requests(count: int, sent: list[int]) -> AsyncIterator[int]:
    for i in range(count):
        sent.append(i)
        yield i


async def test_every_request_is_answered_once_in_the_order_they_complete() -> None:
    context = _Context()
    context.open.set()

    async def answer(i: int) -> str:
        await asyncio.sleep(0.001 * (i % 3))  # later requests may finish first
        return f"a{i}"

    sent: list[int] = []
    await serve_stream(_requests(30, sent), cast(grpc.aio.ServicerContext, context), answer, 8)
    assert sorted(context.written) == sorted(f"a{i}" for i in range(30))
    assert context.written != [f"a{i}" for i in range(30)]  # answered as they completed, not in order


async def test_a_client_that_does_not_read_holds_no_more_than_the_bound() -> None:
    context = _Context()
    started: list[int] = []

    async def answer(i: int) -> str:
        started.append(i)
        return f"a{i}"

    sent: list[int] = []
    handler = asyncio.create_task(
        serve_stream(_requests(100, sent), cast(grpc.aio.ServicerContext, context), answer, 8)
    )
    await asyncio.sleep(0.05)
    # Answers are not written (the client reads nothing): the reads stop at the bound.
    assert len(started) == 8 and len(sent) <= 9
    context.open.set()
    await asyncio.wait_for(handler, 5)
    assert len(context.written) == 100 and len(started) == 100


async def test_an_unexpected_failure_ends_the_stream_with_it() -> None:
    context = _Context()
    context.open.set()

    async def answer(i: int) -> str:
        if i == 4:
            raise RuntimeError("bug")
        return f"a{i}"

    with pytest.raises(RuntimeError, match="bug"):
        await serve_stream(_requests(10, []), cast(Any, context), answer, 8)
