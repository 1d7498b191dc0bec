"""What every protocol shares around one request: its metrics label (one rule), its timing, the one
count in `effnet_requests_total{protocol,model,code}`, the log line of a failure and the access line
(service.logs: protocol, route, model, status, ms, request id; `--no-access-log` turns it off).

Each protocol describes its status codes once (`StatusCodes`: success, the client gone, a crash, and
the error table's column for it) and wraps each request in `observed`. A request that is admitted is
admitted through its observation (`Observation.admit`): the name is resolved once, and the label is the
admitted call's. Only a request that was refused, or that never needed admission (metadata, model
control), takes the engine's rule for the requested name (`label`: a known name, the default model, or
"unknown"), once, when it is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from starlette.requests import Request

from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, CLIENT_GONE
from service.core.call import AdmittedCall
from service.errors import ServiceError, status_for
from service.logs import ACCESS_LOGGER
from service.metrics import Metrics
from service.runtime.priorities import DEFAULT, Priority

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


class Admitting(Protocol):
    """What an observation asks of the engine (in-process or across the process boundary)."""

    def label(self, name: str | None) -> str: ...

    def admit(
        self,
        model: str | None,
        version: int | None = None,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority = DEFAULT,
        request_id: str = "",
        deadline: float | None = None,
    ) -> AdmittedCall: ...


@dataclass
class Observation:
    engine: Admitting
    requested: str | None  # the name as the request gave it (None: the default model)
    request_id: str = ""
    fixed_label: str | None = None  # for requests about no model ("repository")
    code: Code | None = None  # None: the codes' success value when no error was raised
    call: AdmittedCall | None = None
    started: float = field(default_factory=time.monotonic)

    def admit(
        self,
        version: int | None = None,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority = DEFAULT,
        deadline: float | None = None,
    ) -> AdmittedCall:
        """Admit the requested name once; the call carries this request's id and deadline."""
        self.call = self.engine.admit(
            self.requested,
            version,
            top_k=top_k,
            budget_ms=budget_ms,
            priority=priority,
            request_id=self.request_id,
            deadline=deadline,
        )
        return self.call

    @property
    def label(self) -> str:
        if self.call is not None:
            return self.call.label
        if self.fixed_label is not None:
            return self.fixed_label
        self.fixed_label = self.engine.label(self.requested)  # once: it is asked again by the count
        return self.fixed_label

    @property
    def runs(self) -> bool:
        """Admitted to run on a model: counted in its statistics (service/statistics.py)."""
        return self.call is not None


@contextmanager
def observed(
    metrics: Metrics,
    codes: StatusCodes,
    engine: Admitting,
    requested: str | None,
    request_id: str = "",
    *,
    route: str,
    label: str | None = None,
) -> Iterator[Observation]:
    """Count and time the request run inside, and write its access line; errors are logged and
    re-raised for the protocol to map. `route`: "METHOD /path" over HTTP, "package.Service/Method"
    over gRPC; `label` fixes the metrics label of a request about no model."""
    call = Observation(engine, requested, request_id, label)
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
