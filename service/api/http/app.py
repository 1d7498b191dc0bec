"""FastAPI app factory: our own HTTP API (/classify, /v1/models, health, metrics) over the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.api.http.body import read_body, retry_headers
from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, ClientDisconnected, unless_disconnected
from service.api.http.gate import RequestGate
from service.api.http.web import add_front_door
from service.api.v2.http import create_v2_router
from service.core.engine import Engine
from service.errors import (
    BadRequest,
    EmptyBody,
    ServiceError,
    Unauthenticated,
    UnsupportedMediaType,
    status_for,
)
from service.metrics import CONTENT_TYPE, Metrics
from service.schemas import (
    ClassifyResponse,
    ErrorResponse,
    ImageResult,
    ModelInfo,
    ModelList,
    Readiness,
)
from service.settings import Settings

log = logging.getLogger(__name__)

# Bodies we read as one encoded image. curl --data-binary sends form-urlencoded unless told otherwise.
_RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")
_OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/docs/oauth2-redirect",
        "/v2/health/live",
        "/v2/health/ready",
    }
)

_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 500, 503, 504)
}


def error_response(error: ServiceError, request_id: str | None = None) -> JSONResponse:
    headers = retry_headers(error)
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}},
        status_code=status_for(error).http,
        headers=headers,
    )


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


def create_app(engine: Engine, settings: Settings, metrics: Metrics) -> FastAPI:
    app = FastAPI(
        title="effnet-serve",
        version="0.1.0",
        description="EfficientNet B0-B7 image classification over ONNX Runtime with dynamic batching.",
        docs_url=None,  # /docs and /redoc come from add_front_door, with local assets
        redoc_url=None,
        # Relative to /openapi.json: Swagger UI's "Try it out" then keeps a proxy's path prefix.
        servers=[{"url": "."}],
    )
    front_door_paths = add_front_door(app)
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
    admin_key = settings.admin_api_key.get_secret_value().encode() if settings.admin_api_key else None

    def gate_error(error: ServiceError, request_id: str) -> JSONResponse:
        response = error_response(error, request_id)
        if isinstance(error, Unauthenticated):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    app.add_middleware(
        RequestGate,
        draining=lambda: engine.draining,
        api_key=api_key,
        admin_api_key=admin_key,
        open_paths=_OPEN_PATHS | front_door_paths,
        error_response=gate_error,
    )

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            {"error": {"code": "invalid_argument", "message": f"{where}: {first['msg']}"}}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        summary="Classify one or more images",
        openapi_extra={
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
        },
    )
    async def classify(
        request: Request,
        variant: Annotated[
            str | None,
            Query(
                max_length=64,
                description="model name (b0..b7, lite0, ...), a cascade, or 'auto'; default model if omitted",
            ),
        ] = None,
        top_k: Annotated[int, Query(description="predictions per image (1 to min(classes, max_top_k))")] = 5,
        timeout_ms: Annotated[
            int | None, Query(ge=1, le=600_000, description="deadline for this request in milliseconds")
        ] = None,
        version: Annotated[
            int | None, Query(ge=1, description="model version; default: the newest ready version")
        ] = None,
        budget_ms: Annotated[
            float | None,
            Query(gt=0, le=600_000, description="variant=auto: the latency budget in milliseconds"),
        ] = None,
    ) -> ClassifyResponse | Response:
        start = time.monotonic()
        model_label = "unknown"
        code = 500
        try:
            entry = engine.peek(variant, version)
            model_label = variant if variant and engine.router.handles(variant) else entry.name
            engine.check_top_k(entry, top_k)
            engine.check_queue_room(entry)
            images = await images_from_request(request, settings)
            deadline = start + timeout_ms / 1000 if timeout_ms is not None else None
            work = engine.classify(variant or entry.name, images, top_k, deadline, version, budget_ms)
            outcome = await unless_disconnected(request, work)
            code = 200
        except (ClientDisconnected, ClientDisconnect):  # gone while we waited, or in the middle of its upload
            code = CLIENT_CLOSED_REQUEST
            log.info(
                "event=client_disconnected request_id=%s model=%s", request.state.request_id, model_label
            )
            return Response(status_code=code)
        except ServiceError as exc:
            code = status_for(exc).http
            log.info(
                "event=request_failed request_id=%s model=%s code=%d error=%s message=%r",
                request.state.request_id, model_label, code, exc.code, exc.message,
            )  # fmt: skip
            raise
        finally:
            metrics.observe_request("http", model_label, code, time.monotonic() - start)
        assert outcome.model.spec is not None
        return ClassifyResponse(
            model=outcome.model.name,
            version=outcome.model.version or 0,
            weights=outcome.model.spec.weights.kind,
            results=[ImageResult(predictions=p) for p in outcome.predictions],
            timings=outcome.timings,
            route=outcome.route,
        )

    @app.get("/v1/models", response_model=ModelList, summary="Every configured model with its metadata")
    async def list_models() -> ModelList:
        return engine.model_list()

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=_ERROR_RESPONSES)
    async def get_model(name: str) -> ModelInfo:
        return engine.describe(engine.lookup(name))

    @app.get("/healthz", summary="Liveness: 200 while the process serves")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        body = Readiness(ready=engine.ready, models=engine.readiness())
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(create_v2_router(engine, metrics))
    return app
