"""Triton's protocol extensions over HTTP: model configuration, statistics and system shared memory,
added to the V2 router (over_http.py) before its `/models/{name}` routes, so that `/models/stats`
is the statistics of every model and not the metadata of a model called "stats"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.http.body import read_json_object
from service.api.observe import Observation
from service.api.v2 import config as model_configs
from service.api.v2 import shared_memory as shm
from service.api.v2 import stats
from service.core.client import EngineClient
from service.errors import InvalidArgument
from service.metrics import Metrics

Answered = Callable[..., Awaitable[Response]]  # over_http.py's: (request, model name, work, label=...)


def add_extension_routes(
    router: APIRouter,
    engine: EngineClient,
    metrics: Metrics,
    answered: Answered,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    async def config(request: Request, name: str, version: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(model_configs.model_config(engine, name, version))

        return await answered(request, name, work)

    async def statistics(request: Request, name: str = "", version: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(stats.model_statistics(engine, metrics.statistics, name, version))

        return await answered(request, name or None, work, label=None if name else "statistics")

    router.add_api_route(
        "/models/stats",
        statistics,
        methods=["GET"],
        summary="Statistics of every model (Triton's statistics extension)",
        responses=errors,
    )
    _add_shared_memory_routes(router, engine, answered, errors)
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


def _add_shared_memory_routes(
    router: APIRouter, engine: EngineClient, answered: Answered, errors: dict[int | str, dict[str, Any]]
) -> None:

    async def status(request: Request, name: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(shm.status_rows(shm.regions_or_refuse(engine.shared_memory), name))

        return await answered(request, None, work, label="shared_memory")

    async def register(request: Request, name: str) -> Response:
        async def work(call: Observation) -> Response:
            document = await read_json_object(request)
            key, offset, byte_size = document.get("key"), document.get("offset", 0), document.get("byte_size")
            if not isinstance(key, str):
                raise InvalidArgument("'key' must be the name of a POSIX shared memory object")
            for field, value in (("offset", offset), ("byte_size", byte_size)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidArgument(f"'{field}' must be a whole number")
            assert isinstance(offset, int) and isinstance(byte_size, int)
            shm.regions_or_refuse(engine.shared_memory).register(name, key, offset, byte_size)
            return JSONResponse({})  # Triton answers an empty body; ours is the documented JSON

        return await answered(request, None, work, label="shared_memory")

    async def unregister(request: Request, name: str = "") -> Response:
        async def work(call: Observation) -> Response:
            shm.regions_or_refuse(engine.shared_memory).unregister(name)
            return JSONResponse({})  # Triton answers an empty body; ours is the documented JSON

        return await answered(request, None, work, label="shared_memory")

    async def cuda_status(name: str = "") -> Response:
        return JSONResponse([])  # none is ever registered

    async def cuda_register(request: Request, name: str) -> Response:
        async def work(call: Observation) -> Response:
            shm.refuse_cuda()
            return JSONResponse({})  # pragma: no cover - refuse_cuda raises

        return await answered(request, None, work, label="shared_memory")

    async def cuda_unregister(name: str = "") -> Response:
        return JSONResponse({})  # nothing to unregister

    routes: list[tuple[str, Callable[..., Awaitable[Response]], str]] = [
        ("/systemsharedmemory/status", status, "GET"),
        ("/systemsharedmemory/region/{name}/status", status, "GET"),
        ("/systemsharedmemory/region/{name}/register", register, "POST"),
        ("/systemsharedmemory/unregister", unregister, "POST"),
        ("/systemsharedmemory/region/{name}/unregister", unregister, "POST"),
        # CUDA shared memory is not offered: register answers 400 (gRPC UNAVAILABLE), status lists none.
        ("/cudasharedmemory/status", cuda_status, "GET"),
        ("/cudasharedmemory/region/{name}/status", cuda_status, "GET"),
        ("/cudasharedmemory/region/{name}/register", cuda_register, "POST"),
        ("/cudasharedmemory/unregister", cuda_unregister, "POST"),
        ("/cudasharedmemory/region/{name}/unregister", cuda_unregister, "POST"),
    ]
    for path, endpoint, method in routes:
        kind = "System" if path.startswith("/system") else "CUDA"
        summary = f"{kind} shared memory (Triton's extension)"
        router.add_api_route(path, endpoint, methods=[method], summary=summary, responses=errors)
