"""Pieces both HTTP APIs (ours and V2) share: bounded body reading and retry hints."""

from __future__ import annotations

import math

from fastapi import Request

from service.errors import PayloadTooLarge, ServiceError, retry_after


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def retry_headers(error: ServiceError) -> dict[str, str]:
    """`Retry-After` (whole seconds, at least 1) for errors where retrying later makes sense."""
    wait = retry_after(error)
    return {} if wait is None else {"Retry-After": str(max(1, math.ceil(wait)))}
