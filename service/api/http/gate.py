"""The front door of the HTTP app, as plain ASGI middleware (Starlette's BaseHTTPMiddleware costs
a task and stream wrapping per request): request ids, refusal while draining, the API key."""

from __future__ import annotations

import random
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import bearer_matches
from service.errors import NotReady, ServiceError, Unauthenticated

ErrorResponder = Callable[[ServiceError, str], ASGIApp]


def is_model_control(path: str) -> bool:
    """Load and unload: with an admin key configured, they need it instead of the ordinary key."""
    return path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload"))


class RequestGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        draining: Callable[[], bool],
        api_key: bytes | None,
        open_paths: frozenset[str],
        admin_api_key: bytes | None = None,
        error_response: ErrorResponder,
    ) -> None:
        self.app = app
        self.draining = draining
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        self.open_paths = open_paths
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # A log correlation id, not a secret: random's generator needs no system call, where uuid4
        # reads the OS's randomness (and lets go of the GIL) on every request.
        given = headers.get(b"x-request-id", b"")[:64].decode("latin-1")
        request_id = given or f"{random.getrandbits(64):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        guarded = scope["path"] not in self.open_paths
        refusal: ServiceError | None = None
        if guarded and self.draining():
            # Shutting down: requests already inside a handler finish, new ones are refused.
            refusal = NotReady("server is shutting down")
        elif guarded:
            key = self.api_key
            if self.admin_api_key is not None and is_model_control(scope["path"]):
                key = self.admin_api_key
            if key is not None and not bearer_matches(headers.get(b"authorization", b""), key):
                admin = key is self.admin_api_key
                refusal = Unauthenticated("missing or wrong " + ("admin API key" if admin else "API key"))
        if refusal is not None:
            await self.error_response(refusal, request_id)(scope, receive, send)
            return
        request_id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), request_id_header]
            await send(message)

        await self.app(scope, receive, send_with_id)
