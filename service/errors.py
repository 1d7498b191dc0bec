"""Domain errors and the one table that maps them to HTTP status codes and gRPC status codes.

The engine raises these; each protocol layer maps them once (FastAPI exception handlers, one gRPC
helper) through `ERROR_TABLE`. Messages are meant for the client: say what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class ServiceError(Exception):
    """Base of every error a client may see. `code` is a stable machine-readable name."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def about_image(self, index: int) -> None:
        """Name the image of a request of several that this error is about."""
        self.message = f"image {index}: {self.message}"
        self.args = (self.message,)


class BadRequest(ServiceError):
    code = "bad_request"


class BadImage(BadRequest):
    """The bytes are not a decodable image (corrupt, truncated, not an image)."""

    code = "bad_image"


class UnsupportedMediaType(ServiceError):
    """Content type or image format we do not accept."""

    code = "unsupported_media_type"


class EmptyBody(BadRequest):
    code = "empty_body"


class InvalidArgument(BadRequest):
    """A parameter is out of range (top_k, tensor shape, ...)."""

    code = "invalid_argument"


class PayloadTooLarge(ServiceError):
    """Body above the size limit, or an image above the pixel limit (never decoded)."""

    code = "payload_too_large"


class UnknownModel(ServiceError):
    code = "unknown_model"


class UnknownRegion(ServiceError):
    """A shared memory region that is not registered (Triton's shared memory extensions)."""

    code = "unknown_region"


class Unsupported(ServiceError):
    """A protocol feature this server does not offer (e.g. CUDA shared memory)."""

    code = "unsupported"


class Overloaded(ServiceError):
    """Queue full: retry later, after `retry_after` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(ServiceError):
    """The model is not loaded (yet), failed to load, or the server is shutting down."""

    code = "not_ready"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(ServiceError):
    code = "deadline_exceeded"


class Unauthenticated(ServiceError):
    code = "unauthenticated"


class InferenceFailed(ServiceError):
    """The runtime raised while running a batch; only that batch's callers see this."""

    code = "inference_failed"


class LoadFailed(ServiceError):
    """A model load through the repository API failed; the message says why."""

    code = "load_failed"


@dataclass(frozen=True)
class StatusMapping:
    http: int
    grpc: grpc.StatusCode


# Most specific classes first: lookup walks the MRO of the raised error.
ERROR_TABLE: dict[type[ServiceError], StatusMapping] = {
    BadImage: StatusMapping(400, grpc.StatusCode.INVALID_ARGUMENT),
    EmptyBody: StatusMapping(400, grpc.StatusCode.INVALID_ARGUMENT),
    InvalidArgument: StatusMapping(422, grpc.StatusCode.INVALID_ARGUMENT),
    BadRequest: StatusMapping(400, grpc.StatusCode.INVALID_ARGUMENT),
    UnsupportedMediaType: StatusMapping(415, grpc.StatusCode.INVALID_ARGUMENT),
    PayloadTooLarge: StatusMapping(413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    UnknownModel: StatusMapping(404, grpc.StatusCode.NOT_FOUND),
    UnknownRegion: StatusMapping(404, grpc.StatusCode.NOT_FOUND),
    Unsupported: StatusMapping(400, grpc.StatusCode.UNAVAILABLE),
    Overloaded: StatusMapping(503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    NotReady: StatusMapping(503, grpc.StatusCode.UNAVAILABLE),
    DeadlineExceeded: StatusMapping(504, grpc.StatusCode.DEADLINE_EXCEEDED),
    Unauthenticated: StatusMapping(401, grpc.StatusCode.UNAUTHENTICATED),
    InferenceFailed: StatusMapping(500, grpc.StatusCode.INTERNAL),
    LoadFailed: StatusMapping(400, grpc.StatusCode.INVALID_ARGUMENT),
    ServiceError: StatusMapping(500, grpc.StatusCode.INTERNAL),
}


def status_for(error: ServiceError) -> StatusMapping:
    for cls in type(error).__mro__:
        mapping = ERROR_TABLE.get(cls)
        if mapping is not None:
            return mapping
    return ERROR_TABLE[ServiceError]


def retry_after(error: ServiceError) -> float | None:
    """Seconds a client should wait before retrying, for errors where retrying makes sense."""
    return getattr(error, "retry_after", None)
