"""What every protocol shares around one request: its metrics label (one rule), its timing, the one
count in `effnet_requests_total{protocol,model,code}`, the log line of a failure and the access line
(service.logs: protocol, route, model, status, ms, request id; `--no-access-log` turns it off).

Each protocol describes its status codes once (`StatusCodes`: success, the client gone, a crash, and
the error table's column for it) and wraps each request in `observed`. The label starts as the engine's
rule for the requested name (`Engine.label`: a known name, the default model, or "unknown") and becomes
the admitted target's name once the request is admitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from starlette.requests import Request

from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, CLIENT_GONE
from service.core.target import Target
from service.errors import ServiceError, status_for
from service.logs import ACCESS_LOGGER
from service.metrics import Metrics

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

Code = int | str


@dataclass(frozen=True)
class StatusCodes:
    protocol: str
    ok: Code
    gone: Code  # the client went away (disconnected, cancelled, its deadline passed)
    crashed: Code
    of: Callable[[ServiceError], Code]
    gone_errors: tuple[type[BaseException], ...] = ()


def http_codes(protocol: str) -> StatusCodes:
    return StatusCodes(
        protocol, 200, CLIENT_CLOSED_REQUEST, 500, lambda error: status_for(error).http, CLIENT_GONE
    )


def http_route(request: Request) -> str:
    """An HTTP request's route for the access line: its method and path (the query stays out)."""
    return f"{request.method} {request.scope.get('path', '')}"


def grpc_codes(protocol: str) -> StatusCodes:
    return StatusCodes(
        protocol,
        grpc.StatusCode.OK.name,
        grpc.StatusCode.CANCELLED.name,
        grpc.StatusCode.INTERNAL.name,
        lambda error: status_for(error).grpc.name,
        (asyncio.CancelledError,),  # the client went away or its deadline passed
    )


@dataclass
class Observation:
    label: str
    code: Code | None = None  # None: the codes' success value when no error was raised
    started: float = field(default_factory=time.monotonic)
    runs: bool = False  # admitted to run on a model: counted in its statistics (service/statistics.py)

    def admitted(self, target: Target) -> Target:
        self.label = target.name
        self.runs = True
        return target


@contextmanager
def observed(
    metrics: Metrics, codes: StatusCodes, label: str, request_id: str = "", *, route: str
) -> Iterator[Observation]:
    """Count and time the request run inside, and write its access line; errors are logged and
    re-raised for the protocol to map. `route`: "METHOD /path" over HTTP, "package.Service/Method"
    over gRPC."""
    call = Observation(label)
    code: Code = codes.crashed
    try:
        yield call
        code = codes.ok if call.code is None else call.code
    except ServiceError as exc:
        code = codes.of(exc)
        log.info(
            "event=request_failed protocol=%s request_id=%s model=%s code=%s error=%s message=%r",
            codes.protocol, request_id, call.label, code, exc.code, exc.message,
        )  # fmt: skip
        raise
    except codes.gone_errors:
        code = codes.gone
        log.info(
            "event=client_gone protocol=%s request_id=%s model=%s", codes.protocol, request_id, call.label
        )
        raise
    except Exception:
        log.exception("event=request_crashed protocol=%s request_id=%s model=%s", codes.protocol,
                      request_id, call.label)  # fmt: skip
        raise
    finally:
        elapsed = time.monotonic() - call.started
        ran = (code == codes.ok) if call.runs else None
        metrics.observe_request(codes.protocol, call.label, code, elapsed, ran)
        access_log.info(
            "event=access protocol=%s route=%r model=%s status=%s ms=%.1f request_id=%s",
            codes.protocol, route, call.label, code, elapsed * 1000, request_id or "-",
        )  # fmt: skip
