"""HTTP protections below the app, in uvicorn's protocol layer (httptools), where a slow or
abusive client costs no ASGI task and no wake-up of the app:

- header-read deadline: a connection that has not sent a request's headers in time gets 408, closed;
- body-read deadline: the body is collected here and handed to the handler once complete (as a proxy
  would), so a slow upload wakes no handler per piece; one not complete in time gets 408, closed;
- a cap on open connections: above it, requests get a fast 503 with `Connection: close`, except the
  health paths, which keep a small reserve of connections of their own so probes still answer.

Each refusal is counted in `effnet_http_refused_total{reason}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

import httptools
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# File descriptors the process needs besides its HTTP connections (gRPC, models, logs, threads).
_OTHER_FDS = 256


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_body_bytes: int
    max_connections: int
    health_reserve: int
    health_paths: frozenset[str] = HEALTH_PATHS

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_body_bytes=settings.max_body_bytes,
            max_connections=settings.http_max_connections,
            health_reserve=settings.http_health_reserve,
        )


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "effnet_http_refused_total",
            "HTTP requests answered by the protocol layer, before the app: header_timeout and "
            "body_timeout (408, connection closed), connection_limit (503)",
            ["reason"],
            registry=registry,
        )
        for reason in ("header_timeout", "body_timeout", "connection_limit"):
            self.refused.labels(reason)
        self.open_connections = Gauge(
            "effnet_http_open_connections", "Open HTTP connections", registry=registry
        )


def _response(status: int, phrase: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class CoalescedWrites:
    """A connection's transport whose writes within one turn of the event loop go out as one.

    uvicorn writes an answer's status line and headers, then its body, in two writes. A replica killed
    between them leaves the proxy holding headers without a body: it has begun the client's answer
    and cannot resend the request to another replica, so the client sees a broken answer. One write
    per answer closes that gap, and saves a system call. Everything but writing, closing and aborting
    goes to the transport itself."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and the connection cap. `limits` and `metrics` are
    set on the subclass `limited_protocol` makes (uvicorn builds protocols from a class)."""

    limits: EdgeLimits
    metrics: EdgeMetrics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._buffering = False
        self._refused = False  # answered here; the rest of what the client sent is ignored
        self._pieces: list[bytes] = []  # the body being collected, joined once when handed over
        self._collected = 0

    # --- connection ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
        self.metrics.open_connections.inc()
        self._over_cap = len(self.connections) > self.limits.max_connections
        self._arm(self.limits.header_timeout_s, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.metrics.open_connections.dec()
        super().connection_lost(exc)

    # --- parser callbacks ---
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection: from its first byte
            self._arm(self.limits.header_timeout_s, self._header_timed_out)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._over_cap and not self._health_within_reserve():
            self._refuse_over_cap()
            return
        super().on_headers_complete()
        self._buffering = self._has_body() and not self._declared_too_large()
        self._pieces, self._collected = [], 0
        if self._buffering:
            self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        if not self._buffering:
            super().on_body(body)
            return
        # Collect the body without waking the handler for each piece (uvicorn wakes it per read and
        # pauses reading at 64 KiB until it has consumed them), as a list of pieces: growing one
        # buffer would copy a large upload again at each growth, and uvicorn copies the buffer once
        # more when it hands it over (a single bytes object it hands over as it is). Past the body
        # limit the handler gets what has come so far and answers 413 itself.
        self._pieces.append(body)
        self._collected += len(body)
        if self._collected > self.limits.max_body_bytes:
            self._hand_over_body()
            self.cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        if self._buffering:
            self._hand_over_body()
        super().on_message_complete()

    def _hand_over_body(self) -> None:
        self._buffering = False
        self.cycle.body = b"".join(self._pieces)  # type: ignore[assignment]  # read as bytes(body)
        self._pieces, self._collected = [], 0

    # --- helpers ---
    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    def _declared_too_large(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit():
                return int(value) > self.limits.max_body_bytes
        return False

    def _path(self) -> str:
        try:
            return httptools.parse_url(self.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            return ""

    def _health_within_reserve(self) -> bool:
        limit = self.limits.max_connections + self.limits.health_reserve
        return self._path() in self.limits.health_paths and len(self.connections) <= limit

    def _refuse_over_cap(self) -> None:
        self.metrics.refused.labels("connection_limit").inc()
        message = f"the server has {self.limits.max_connections} open connections; try again shortly"
        self._close_with(_response(503, "Service Unavailable", "overloaded", message, "retry-after: 1\r\n"))

    def _header_timed_out(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # headers done, a request in the app: not ours to time out
        self.metrics.refused.labels("header_timeout").inc()
        message = f"request headers not received within {self.limits.header_timeout_s:g} s"
        self._close_with(_response(408, "Request Timeout", "request_timeout", message))

    def _body_timed_out(self) -> None:
        self._deadline = None
        self.metrics.refused.labels("body_timeout").inc()
        cycle = self.cycle
        log.info("event=body_timeout client=%s timeout_s=%g", self.client, self.limits.body_timeout_s)
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        if cycle is not None:
            cycle.disconnected = True  # the handler reads http.disconnect; what it sends is dropped
            cycle.message_event.set()
        message = f"request body not received within {self.limits.body_timeout_s:g} s"
        self._close_with(_response(408, "Request Timeout", "request_timeout", message))

    def _close_with(self, response: bytes) -> None:
        self._disarm()
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def limited_protocol(limits: EdgeLimits, metrics: EdgeMetrics) -> type[HttpToolsProtocol]:
    """The protocol class to pass as uvicorn.Config(http=...)."""
    return type("LimitedHttpToolsProtocol", (_LimitedProtocol,), {"limits": limits, "metrics": metrics})


def ensure_file_descriptors(limits: EdgeLimits) -> None:
    """Raise the soft RLIMIT_NOFILE (up to the hard limit) so the connection cap, not the OS, is what
    refuses a flood; warn when even the hard limit is too low."""
    needed = limits.max_connections + limits.health_reserve + _OTHER_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning(
                "event=fd_limit_low nofile=%d needed=%d: lower EFFNET_HTTP_MAX_CONNECTIONS", target, needed
            )


class AbsorbClientDisconnect:
    """Outermost ASGI wrapper: a client gone before its body was read in full (including one this
    module timed out with 408) ends its handler with starlette's ClientDisconnect; there is nobody
    left to answer, so end quietly instead of logging a traceback per slow client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            log.info("event=client_gone_before_body path=%s", scope.get("path", ""))
