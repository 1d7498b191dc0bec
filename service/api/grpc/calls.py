"""What every gRPC servicer shares: deadlines, the one error mapping, and the observed call."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from service.api.observe import Observation, StatusCodes, observed
from service.errors import ServiceError, retry_after, status_for
from service.metrics import Metrics

T = TypeVar("T")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline as an absolute time.monotonic() value (None: it set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    wait = retry_after(error)
    if wait is not None:
        context.set_trailing_metadata((("retry-after", f"{wait:g}"),))
    await context.abort(status_for(error).grpc, error.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def answer(
    metrics: Metrics,
    codes: StatusCodes,
    label: str,
    context: grpc.aio.ServicerContext,
    work: Callable[[Observation], Awaitable[T]],
) -> T:
    """Run one RPC's work, observed; a ServiceError becomes its status (with a retry hint)."""
    try:
        with observed(metrics, codes, label) as call:
            return await work(call)
    except ServiceError as exc:
        await abort(context, exc)
    except Exception:  # CancelledError (the client went away) is no Exception: it passes through
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise  # pragma: no cover - abort raises
