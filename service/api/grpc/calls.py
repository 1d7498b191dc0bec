"""What every gRPC servicer shares: deadlines, the one error mapping, the observed call, and the
bounded stream of many requests (ours and V2's)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from service.api.observe import Admitting, Observation, StatusCodes, observed
from service.errors import ServiceError, retry_after, status_for
from service.metrics import Metrics

T = TypeVar("T")
Request = TypeVar("Request")
Response = TypeVar("Response")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline as an absolute time.monotonic() value (None: it set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def request_id_of(context: grpc.aio.ServicerContext, given: str = "") -> str:
    """The request's id for the log lines: the client's `x-request-id` metadata, else the id the
    message carries (V2's `id`, ours), else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:128]
    return given[:128] or f"{random.getrandbits(64):016x}"


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    wait = retry_after(error)
    if wait is not None:
        context.set_trailing_metadata((("retry-after", f"{wait:g}"),))
    await context.abort(status_for(error).grpc, error.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def answer(
    metrics: Metrics,
    codes: StatusCodes,
    engine: Admitting,
    requested: str | None,
    context: grpc.aio.ServicerContext,
    work: Callable[[Observation], Awaitable[T]],
    *,
    route: str,
    request_id: str = "",
    label: str | None = None,
) -> T:
    """Run one RPC's work, observed (about the model `requested`, or with a fixed `label`); a
    ServiceError becomes its status (with a retry hint)."""
    try:
        with observed(metrics, codes, engine, requested, request_id, route=route, label=label) as call:
            return await work(call)
    except ServiceError as exc:
        await abort(context, exc)
    except Exception:  # CancelledError (the client went away) is no Exception: it passes through
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise  # pragma: no cover - abort raises


async def answer_in_stream(
    metrics: Metrics,
    codes: StatusCodes,
    engine: Admitting,
    requested: str | None,
    work: Callable[[Observation], Awaitable[T]],
    failed: Callable[[ServiceError], T],
    request_id: str = "",
    *,
    route: str,
) -> T:
    """One request of a stream, observed as a call of its own (as `answer` observes a unary call): its
    answer, or for a ServiceError `failed`'s answer, since a stream has no status per request."""
    try:
        with observed(metrics, codes, engine, requested, request_id, route=route) as call:
            return await work(call)
    except ServiceError as exc:
        return failed(exc)


async def serve_stream(
    requests: AsyncIterator[Request],
    context: grpc.aio.ServicerContext,
    answer_one: Callable[[Request], Awaitable[Response]],
    max_in_flight: int,
) -> None:
    """Read a stream's requests as they come and write each one's answer as it completes.

    At most `max_in_flight` requests are held at once, from the read until their answer is written:
    beyond that the next read waits, so gRPC's flow control holds the client back, and a client that
    sends without reading its answers holds the server no more than that. `answer_one` turns a
    request's failure into its answer, so the stream goes on; anything else it raises ends the stream
    with that error."""
    answers: asyncio.Queue[Response | Exception | None] = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    working: set[asyncio.Task[None]] = set()

    async def work(request: Request) -> None:
        try:
            answer: Response | Exception = await answer_one(request)
        except Exception as exc:  # a bug: the writer ends the stream with it, no request goes unanswered
            answer = exc
        await answers.put(answer)

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(work(request))
                working.add(task)
                task.add_done_callback(working.discard)
            if working:
                await asyncio.gather(*working)
        finally:
            await answers.put(None)

    reader = asyncio.create_task(read(), name="stream-reader")
    try:
        while (response := await answers.get()) is not None:
            if isinstance(response, Exception):
                raise response
            await context.write(response)
            slots.release()
        await reader  # surfaces a failed read
    finally:
        for task in (reader, *working):
            task.cancel()
