"""What every gRPC servicer shares: deadlines, the one error mapping, request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from service.core.engine import Engine
from service.errors import ServiceError, retry_after, status_for
from service.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline as an absolute time.monotonic() value (None: it set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def model_label(engine: Engine, name: str) -> str:
    """A bounded metrics label: a configured model's name, else "unknown"."""
    if not name:
        return engine.default_model or "unknown"
    return engine.canonical(name) or "unknown"


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    wait = retry_after(error)
    if wait is not None:
        context.set_trailing_metadata((("retry-after", f"{wait:g}"),))
    await context.abort(status_for(error).grpc, error.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def observed(
    metrics: Metrics,
    protocol: str,
    label: str,
    context: grpc.aio.ServicerContext,
    call: Callable[[], Awaitable[T]],
) -> T:
    """Run one RPC's work: map ServiceError to its status, count the request in metrics."""
    start = time.monotonic()
    code = grpc.StatusCode.INTERNAL
    try:
        result = await call()
        code = grpc.StatusCode.OK
        return result
    except asyncio.CancelledError:  # the client went away or its deadline passed
        code = grpc.StatusCode.CANCELLED
        raise
    except ServiceError as exc:
        code = status_for(exc).grpc
        log.info(
            "event=request_failed protocol=%s model=%s code=%s error=%s message=%r",
            protocol, label, code.name, exc.code, exc.message,
        )  # fmt: skip
        await abort(context, exc)
    except Exception:
        log.exception("event=request_crashed protocol=%s model=%s", protocol, label)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise  # pragma: no cover - abort raises
    finally:
        metrics.observe_request(protocol, label, code.name, time.monotonic() - start)
