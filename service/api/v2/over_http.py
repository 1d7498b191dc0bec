"""The Open Inference Protocol (KServe V2) over HTTP: a FastAPI router for everything under `/v2`.

Requests carry JSON tensors, or use the binary tensor data extension: the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw data of each input whose parameters hold
`binary_data_size`. Outputs are binary when the request asks (`binary_data_output` for all, an output's
`binary_data` for one). Errors answer `{"error": "<message>"}` with the status from the one table.
Health and readiness answer 200 for true and 400 (not ready) or 404 (unknown model) for false.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.http.body import read_body, read_json_object, retry_headers
from service.api.http.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from service.api.observe import Observation, http_codes, http_route, observed
from service.api.v2 import dataplane as v2
from service.api.v2 import shared_memory as shm
from service.api.v2 import tensors
from service.api.v2.extensions_http import add_extension_routes
from service.core.client import EngineClient
from service.core.shared_memory import SharedMemoryRegions
from service.errors import (
    BadRequest,
    EmptyBody,
    InvalidArgument,
    ServiceError,
    UnknownModel,
    UnsupportedMediaType,
    status_for,
)
from service.metrics import Metrics

log = logging.getLogger(__name__)

V2_HTTP = http_codes("v2-http")
HEADER_LENGTH = "Inference-Header-Content-Length"


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(
        {"error": error.message}, status_code=status_for(error).http, headers=retry_headers(error)
    )


# ------------------------------------------------------------------------------------ request parsing
def parse_infer_request(
    model: str,
    version: str,
    body: bytes,
    header_length: str | None,
    regions: SharedMemoryRegions | None = None,
) -> v2.InferRequest:
    """With `regions`, an input may name a registered shared memory region instead of carrying data."""
    if not body:
        raise EmptyBody("the request body is empty; send an inference request JSON object")
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} is '{header_length[:32]}', the body holds {len(body)} bytes")
        split = int(header_length)
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("the inference request must be a JSON object")
    raw_inputs = _list_of_objects(document.get("inputs"), "inputs")
    offset = 0
    inputs = []
    for item in raw_inputs:
        name, datatype = _string(item, "name"), _string(item, "datatype")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise InvalidArgument(f"input '{name[:64]}': 'shape' must be a list of integers")
        parameters = _parameters(item, f"input '{name[:64]}'")
        size = parameters.get("binary_data_size")
        if shm.names_region(parameters):
            data = shm.input_from_region(shm.regions_or_refuse(regions), name, datatype, shape, parameters)
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"input '{name[:64]}': binary_data_size {size} does not fit the body")
            data = tensors.tensor_from_raw(name, datatype, shape, bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            data = tensors.tensor_from_values(name, datatype, shape, item["data"])
        else:
            raise InvalidArgument(f"input '{name[:64]}' has neither 'data' nor binary_data_size")
        inputs.append(v2.InputTensor(name, datatype, tuple(shape), data))
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data follow the header unused")
    outputs = []
    for item in _list_of_objects(document.get("outputs", []), "outputs"):
        name = _string(item, "name")
        outputs.append(v2.RequestedOutput.from_parameters(name, _parameters(item, f"output '{name[:64]}'")))
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    return v2.InferRequest(
        model=model,
        inputs=inputs,
        outputs=outputs,
        version=version,
        id=request_id,
        parameters=_parameters(document, "the request"),
    )


async def _control_parameters(request: Request, what: str) -> dict[str, Any]:
    return _parameters(await read_json_object(request, empty_ok=True), f"the {what} request")


def _list_of_objects(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidArgument(f"'{what}' must be a list of objects")
    return value


def _string(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"a tensor's '{key}' must be a string")
    return value


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be an object")
    return parameters


# --------------------------------------------------------------------------------- response encoding
def encode_infer_response(
    response: v2.InferResponse,
    parameters: dict[str, Any],
    placed: dict[str, dict[str, Any]] | None = None,
) -> Response:
    """`placed`: outputs written to shared memory, answered with their name, datatype and shape only."""
    binary_default = parameters.get("binary_data_output") is True
    header_outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in response.outputs:
        wanted = output.requested.parameters.get("binary_data") if output.requested else None
        binary = wanted if isinstance(wanted, bool) else binary_default
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if placed and output.name in placed:
            # Neither data nor parameters: Triton's C++ client reads any output parameters as the
            # binary extension's, and the caller knows where it asked the output to go.
            pass
        elif binary:
            chunk = _raw(output.data)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _json_values(output.data)
        header_outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": header_outputs,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = dict(response.parameters)
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _raw(data: tensors.TensorData) -> bytes:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    return tensors.encode_bytes_elements(data)


def _json_values(data: tensors.TensorData) -> list[Any]:
    if isinstance(data, np.ndarray):
        return data.ravel().tolist()
    return [item.decode("utf-8", errors="replace") for item in data]


def _metadata_json(meta: v2.ModelMetadata) -> dict[str, Any]:
    def tensors(items: tuple[v2.TensorMetadata, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


# -------------------------------------------------------------------------------------------- routes
_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": "error", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for code in (400, 401, 404, 413, 415, 422, 500, 503, 504)
}


_MODEL_READY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    "required": ["name", "ready"],
}
# Readiness answers its own document for true (200) and false (400); errors only for an unknown model.
_MODEL_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: doc for code, doc in _ERRORS.items() if code != 400},
    400: {"description": "not ready", "content": {"application/json": {"schema": _MODEL_READY_SCHEMA}}},
}
_SERVER_READY_SCHEMA = {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]}


def create_v2_router(engine: EngineClient, metrics: Metrics) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

    async def answered(
        request: Request | None,
        name: str | None,
        work: Callable[[Observation], Awaitable[Response]],
        label: str | None = None,
    ) -> Response:
        """Run one request's work, observed (about the model `name`, or with a fixed `label`); errors
        answered in V2's shape."""
        request_id = getattr(request.state, "request_id", "") if request is not None else ""
        route = http_route(request) if request is not None else "-"
        try:
            with observed(metrics, V2_HTTP, engine, name, request_id, route=route, label=label) as call:
                response = await work(call)
                call.code = response.status_code
                return response
        except ServiceError as exc:
            return error_response(exc)
        except V2_HTTP.gone_errors:  # gone while we waited, or in the middle of its upload
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except Exception:
            return JSONResponse({"error": "internal error"}, status_code=500)

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": v2.SERVER_NAME, "version": v2.server_version(), "extensions": list(v2.EXTENSIONS)}

    @router.get("/health/live", summary="Liveness: 200 while the process serves")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get(
        "/health/ready",
        summary="Readiness: 200 when every model is ready, else 400",
        responses={
            400: {
                "description": "not ready",
                "content": {"application/json": {"schema": _SERVER_READY_SCHEMA}},
            }
        },
    )
    async def ready() -> JSONResponse:
        is_ready = engine.ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 400)

    async def model_metadata(request: Request, name: str, version: str = "") -> Response:
        async def work(call: Observation) -> Response:
            return JSONResponse(_metadata_json(v2.metadata_of(engine, name, version)))

        return await answered(request, name, work)

    async def model_ready(request: Request, name: str, version: str = "") -> Response:
        try:
            is_ready = v2.model_ready(engine, name, version)
        except UnknownModel as exc:
            return error_response(exc)
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 400)

    async def model_infer(request: Request, name: str, version: str = "") -> Response:
        async def work(observation: Observation) -> Response:
            # Admitted from the URL alone: an unknown model or a full queue is refused before the body
            # (up to max_body_bytes) is read.
            call = v2.admit(observation, name, version)
            encoding = request.headers.get("content-encoding", "identity").lower()
            if encoding != "identity":
                raise UnsupportedMediaType(f"Content-Encoding '{encoding[:32]}' is not supported")
            body = await read_body(request, engine.settings.max_body_bytes)
            header = request.headers.get(HEADER_LENGTH)
            regions = engine.shared_memory
            infer_request = parse_infer_request(name, version, body, header, regions)
            response = await unless_disconnected(request, v2.infer(engine, call, infer_request))
            placed = shm.write_outputs(regions, response) if regions is not None else None
            return encode_infer_response(response, infer_request.parameters, placed)

        return await answered(request, name, work)

    @router.post(
        "/repository/index",
        summary="Model repository index (Triton's repository extension)",
        responses=_ERRORS,
    )
    async def repository_index(request: Request) -> Response:
        async def work(call: Observation) -> Response:
            document = await read_json_object(request, empty_ok=True)
            ready = document.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be true or false")
            rows = [
                {k: v for k, v in vars(row).items() if v or k == "name"}
                for row in engine.repository_index(ready)
            ]
            return JSONResponse(rows)

        return await answered(request, None, work, label="repository")

    @router.post(
        "/repository/models/{name}/load", summary="Load or reload a model (explicit mode)", responses=_ERRORS
    )
    async def repository_load(request: Request, name: str) -> Response:
        async def work(call: Observation) -> Response:
            await v2.load(engine, name, await _control_parameters(request, "load"))
            return Response(status_code=200)

        return await answered(request, name, work)

    @router.post(
        "/repository/models/{name}/unload", summary="Unload a model (explicit mode)", responses=_ERRORS
    )
    async def repository_unload(request: Request, name: str) -> Response:
        async def work(call: Observation) -> Response:
            await v2.unload(engine, name, await _control_parameters(request, "unload"))
            return Response(status_code=200)

        return await answered(request, name, work)

    add_extension_routes(router, engine, metrics, answered, _ERRORS)  # before /models/{name}: see there
    for base in ("/models/{name}", "/models/{name}/versions/{version}"):
        router.add_api_route(
            base, model_metadata, methods=["GET"], summary="Model metadata", responses=_ERRORS
        )
        router.add_api_route(
            f"{base}/ready",
            model_ready,
            methods=["GET"],
            summary="Model readiness: 200 ready, 400 not ready (a version that does not exist is not ready)",
            responses=_MODEL_READY_RESPONSES,
        )
        router.add_api_route(
            f"{base}/infer", model_infer, methods=["POST"], summary="Inference", responses=_ERRORS
        )
    return router
