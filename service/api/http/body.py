"""Request bodies for both HTTP APIs (ours and V2): bounded reading, the images of a /classify body
(raw or multipart), and the retry hint of a refusal."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import (
    BadRequest,
    EmptyBody,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    retry_after,
)
from service.settings import Settings

# Bodies we read as one encoded image. curl --data-binary sends form-urlencoded unless told otherwise.
_RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")


# How the routes that take images document their body in OpenAPI (read_images accepts all three).
IMAGE_BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "One encoded image as the raw body, or multipart/form-data with image files.",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
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


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def images_from_request(request: Request, settings: Settings) -> list[bytes]:
    """Raw body (image/*, application/octet-stream) -> one image; multipart/form-data -> its files."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data" and not (
        media_type.startswith("image/") or media_type in _RAW_TYPES
    ):
        raise UnsupportedMediaType(
            f"content type '{media_type[:100]}' is not accepted; send an image/* or "
            "application/octet-stream body, or multipart/form-data with image files"
        )
    body = await read_body(request, settings.max_body_bytes)
    if not body:
        raise EmptyBody("the request body is empty; send the image bytes as the body")
    if media_type != "multipart/form-data":
        return [body]
    parser = MultiPartParser(
        request.headers,
        _replay(body),
        max_files=settings.max_images_per_request,
        max_fields=settings.max_images_per_request,
        max_part_size=settings.max_body_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise BadRequest("the multipart body holds no file part; attach images as files")
        images = [await upload.read() for upload in files]
    finally:
        await form.close()
    for index, data in enumerate(images):
        if not data:
            raise EmptyBody(f"file part {index} is empty")
    return images


CONTROL_BODY_LIMIT = 64 * 1024  # the JSON bodies of control requests (repository, shared memory)


async def read_json_object(request: Request, empty_ok: bool = False) -> dict[str, Any]:
    """A control request's JSON object body (at most CONTROL_BODY_LIMIT bytes); with `empty_ok`, an
    empty body is an empty object (tritonclient sends one for the repository index)."""
    body = await read_body(request, CONTROL_BODY_LIMIT)
    if empty_ok and not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document
