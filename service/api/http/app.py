"""FastAPI app factory: our own HTTP API (/classify, /v1/models, health, metrics) over the engine."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.http.body import IMAGE_BODY_OPENAPI, images_from_request, retry_headers
from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from service.api.http.explain import create_explain_router
from service.api.http.gate import RequestGate
from service.api.http.params import (
    BudgetMs,
    PriorityHeader,
    PriorityQuery,
    TimeoutMs,
    Variant,
    Version,
    deadline_after,
    request_priority,
)
from service.api.http.web import add_front_door
from service.api.observe import http_codes, http_route, observed
from service.api.v2.over_http import create_v2_router
from service.core.client import EngineClient
from service.errors import (
    ServiceError,
    Unauthenticated,
    status_for,
)
from service.metrics import CONTENT_TYPE, Metrics
from service.schemas import (
    ClassifyResponse,
    ErrorResponse,
    ImageResult,
    ModelInfo,
    ModelLabels,
    ModelList,
    Readiness,
)
from service.settings import Settings

log = logging.getLogger(__name__)

HTTP = http_codes("http")

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


def create_app(engine: EngineClient, settings: Settings, metrics: Metrics) -> FastAPI:
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
        openapi_extra=IMAGE_BODY_OPENAPI,
    )
    async def classify(
        request: Request,
        variant: Variant = None,
        top_k: Annotated[int, Query(description="predictions per image (1 to min(classes, max_top_k))")] = 5,
        timeout_ms: TimeoutMs = None,
        version: Version = None,
        budget_ms: BudgetMs = None,
        priority: PriorityQuery = None,
        x_priority: PriorityHeader = None,
        explain: Annotated[
            bool, Query(description="add each prediction's class activation map (a grid of numbers)")
        ] = False,
    ) -> ClassifyResponse | Response:
        start = time.monotonic()
        try:
            with observed(
                metrics, HTTP, engine, variant, request.state.request_id, route=http_route(request)
            ) as observation:
                level = request_priority(priority, x_priority)
                deadline = deadline_after(start, timeout_ms)
                call = observation.admit(
                    version, top_k=top_k, budget_ms=budget_ms, priority=level, deadline=deadline
                )
                images = await images_from_request(request, settings)
                outcome = await unless_disconnected(request, engine.classify(call, images, explain=explain))
        except HTTP.gone_errors:  # gone while we waited, or in the middle of its upload
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        assert outcome.model.spec is not None
        return ClassifyResponse(
            model=outcome.model.name,
            version=outcome.model.version or 0,
            weights=outcome.model.spec.weights.kind,
            results=[
                ImageResult(predictions=p, cached=bool(outcome.cached) and outcome.cached[i])
                for i, p in enumerate(outcome.predictions)
            ],
            timings=outcome.timings,
            route=outcome.route,
            cached=outcome.all_cached,
        )

    @app.get("/v1/models", response_model=ModelList, summary="Every configured model with its metadata")
    async def list_models() -> ModelList:
        return engine.model_list()

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=_ERROR_RESPONSES)
    async def get_model(name: str) -> ModelInfo:
        return engine.describe(engine.lookup(name))

    @app.get(
        "/v1/models/{name}/labels",
        response_model=ModelLabels,
        responses=_ERROR_RESPONSES,
        summary="The class names of a ready model, by class index (what `python -m service eval` maps to)",
    )
    async def get_labels(name: str) -> ModelLabels:
        entry = engine.ready_version(name)
        return ModelLabels(model=entry.name, version=entry.version or 0, labels=entry.labels)

    @app.get("/healthz", summary="Liveness: 200 while the process serves")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        body = Readiness(ready=engine.ready, models=engine.readiness())
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(await engine.render_metrics(), media_type=CONTENT_TYPE)

    app.include_router(create_explain_router(engine, settings, metrics, HTTP, _ERROR_RESPONSES))
    app.include_router(create_v2_router(engine, metrics))
    return app
