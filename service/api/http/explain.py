"""`POST /embed` (the pooled feature vectors) and `POST /explain` (a PNG: the photo with one class's
activation map over it). Thin: the engine runs them in the same batches as classifications."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.api.http.body import IMAGE_BODY_OPENAPI, images_from_request
from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
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
from service.api.observe import StatusCodes, http_route, observed
from service.core.client import EngineClient
from service.core.explain import vectors
from service.errors import InvalidArgument
from service.metrics import Metrics
from service.schemas import EmbedResponse, EmbedResult
from service.settings import Settings

OCTET_STREAM = "application/octet-stream"


def _wants_binary(request: Request) -> bool:
    """`Accept: application/octet-stream` (and no preference for JSON) asks for raw float32."""
    accept = request.headers.get("accept", "").lower()
    return OCTET_STREAM in accept and "application/json" not in accept


def create_explain_router(
    engine: EngineClient,
    settings: Settings,
    metrics: Metrics,
    codes: StatusCodes,
    error_responses: dict[int | str, dict[str, object]],
) -> APIRouter:
    router = APIRouter()
    binary_vectors = {
        "content": {
            "application/json": {},
            OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "JSON, or float32 little-endian N x C for Accept: application/octet-stream",
    }

    @router.post(
        "/embed",
        response_model=EmbedResponse,
        responses={200: binary_vectors, **error_responses},
        summary="The pooled feature vector of each image (JSON, or float32 by Accept)",
        openapi_extra=IMAGE_BODY_OPENAPI,
    )
    async def embed(
        request: Request,
        variant: Variant = None,
        version: Version = None,
        timeout_ms: TimeoutMs = None,
        normalize: Annotated[bool, Query(description="scale each vector to unit length")] = False,
        budget_ms: BudgetMs = None,
        priority: PriorityQuery = None,
        x_priority: PriorityHeader = None,
    ) -> EmbedResponse | Response:
        start = time.monotonic()
        try:
            with observed(
                metrics, codes, engine, variant, request.state.request_id, route=http_route(request)
            ) as observation:
                level = request_priority(priority, x_priority)
                deadline = deadline_after(start, timeout_ms)
                call = observation.admit(version, budget_ms=budget_ms, priority=level, deadline=deadline)
                images = await images_from_request(request, settings)
                outcome = await unless_disconnected(request, engine.embed(call, images))
        except codes.gone_errors:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        found = vectors(outcome, normalize)
        model, version_served = outcome.model.name, outcome.model.version or 0
        if _wants_binary(request):
            return Response(
                found.astype("<f4").tobytes(),
                media_type=OCTET_STREAM,
                headers={
                    "X-Model": model,
                    "X-Model-Version": str(version_served),
                    "X-Embedding-Shape": f"{found.shape[0]},{found.shape[1]}",
                    "X-Embedding-Dtype": "float32-le",
                },
            )
        return EmbedResponse(
            model=model,
            version=version_served,
            dimension=int(found.shape[1]),
            normalized=normalize,
            results=[EmbedResult(vector=row.tolist()) for row in found],
            timings=outcome.timings,
            route=outcome.route,
        )

    @router.post(
        "/explain",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses,
        },
        summary="The photo with a class activation map over it (PNG)",
        openapi_extra=IMAGE_BODY_OPENAPI,
    )
    async def explain(
        request: Request,
        variant: Variant = None,
        version: Version = None,
        timeout_ms: TimeoutMs = None,
        class_id: Annotated[
            int | None, Query(ge=0, description="the class to map; default: the top class")
        ] = None,
        budget_ms: BudgetMs = None,
        priority: PriorityQuery = None,
        x_priority: PriorityHeader = None,
    ) -> Response:
        start = time.monotonic()
        try:
            with observed(
                metrics, codes, engine, variant, request.state.request_id, route=http_route(request)
            ) as observation:
                level = request_priority(priority, x_priority)
                deadline = deadline_after(start, timeout_ms)
                call = observation.admit(version, budget_ms=budget_ms, priority=level, deadline=deadline)
                images = await images_from_request(request, settings)
                if len(images) != 1:
                    raise InvalidArgument(f"/explain takes one image, got {len(images)}")
                outcome, mapped, png = await unless_disconnected(
                    request, engine.explain(call, images[0], class_id)
                )
        except codes.gone_errors:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        labels = outcome.model.labels
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Model": outcome.model.name,
                "X-Model-Version": str(outcome.model.version or 0),
                "X-Class-Id": str(mapped),
                # Header values are latin-1: a label outside it is left out rather than mangled.
                **({"X-Class-Label": labels[mapped]} if labels[mapped].isascii() else {}),
            },
        )

    return router
