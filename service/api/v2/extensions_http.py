"""Triton's protocol extensions over HTTP: model configuration, statistics and system shared memory,
added to the V2 router (over_http.py) before its `/models/{name}` routes, so that `/models/stats`
is the statistics of every model and not the metadata of a model called "stats"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.observe import Observation
from service.api.v2 import config as model_configs
from service.api.v2 import stats
from service.core.engine import Engine
from service.metrics import Metrics

Answered = Callable[[str, Callable[[Observation], Awaitable[Response]]], Awaitable[Response]]


def add_extension_routes(
    router: APIRouter,
    engine: Engine,
    metrics: Metrics,
    answered: Answered,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    async def config(name: str, version: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(model_configs.model_config(engine, name, version))

        return await answered(engine.label(name), work)

    async def statistics(name: str = "", version: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(stats.model_statistics(engine, metrics.statistics, name, version))

        return await answered(engine.label(name) if name else "statistics", work)

    router.add_api_route(
        "/models/stats",
        statistics,
        methods=["GET"],
        summary="Statistics of every model (Triton's statistics extension)",
        responses=errors,
    )
    for base in ("/models/{name}", "/models/{name}/versions/{version}"):
        router.add_api_route(
            f"{base}/stats",
            statistics,
            methods=["GET"],
            summary="A model's statistics (Triton's statistics extension)",
            responses=errors,
        )
        router.add_api_route(
            f"{base}/config",
            config,
            methods=["GET"],
            summary="Model configuration (Triton's ModelConfig; model configuration extension)",
            responses=errors,
        )
