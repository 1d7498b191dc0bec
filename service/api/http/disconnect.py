"""Cancel an HTTP request's work when its client goes away.

Starlette does not cancel a handler whose client disconnected, so a request waiting in a batcher's
queue would hold its slot (and later burn inference) for nobody. The handlers run the engine call
through `unless_disconnected`, which watches the ASGI `http.disconnect` message and cancels the call;
the batcher then drops the request's queued items.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")

# Not a real HTTP status (nginx's "client closed request"); recorded in metrics, read by nobody.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready; its work was cancelled."""


# A client gone while we waited (ours), or in the middle of its upload (starlette's).
CLIENT_GONE: tuple[type[Exception], ...] = (ClientDisconnected, ClientDisconnect)


async def _disconnected(request: Request) -> None:
    # Call only once the body has been read: from then on the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, unless the client disconnects first: then `work` is cancelled and
    ClientDisconnected raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnected("client disconnected")
    return task.result()
