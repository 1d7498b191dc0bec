"""`inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, translated to the V2 data
plane (`service.api.v2.dataplane`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import numpy as np

from service._generated.inference import grpc_service_pb2 as pb
from service._generated.inference import grpc_service_pb2_grpc as pb_grpc
from service.api.grpc.calls import answer, answer_in_stream, deadline_of, request_id_of, serve_stream
from service.api.observe import Observation, grpc_codes
from service.api.v2 import dataplane as v2
from service.api.v2 import shared_memory as shm
from service.api.v2 import tensors
from service.api.v2.extensions_grpc import TritonExtensions
from service.core.client import EngineClient
from service.core.shared_memory import SharedMemoryRegions
from service.errors import InvalidArgument, ServiceError, retry_after, status_for
from service.metrics import Metrics

V2_GRPC = grpc_codes("v2-grpc")
# Requests of one ModelStreamInfer held at once, until their answers are written; further reads wait.
# As many as the largest CUDA batch, so that one client's stream can fill it.
STREAM_MAX_IN_FLIGHT = 256

# Which InferTensorContents field carries each datatype (the specification's table).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_of(message_map: Any) -> dict[str, Any]:
    """map<string, InferParameter> -> plain values."""
    values: dict[str, Any] = {}
    for key, parameter in message_map.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def repository_parameters(message_map: Any) -> dict[str, Any]:
    """map<string, ModelRepositoryParameter> -> plain values (the same oneof shape as InferParameter)."""
    return parameters_of(message_map)


def set_parameter(message_map: Any, key: str, value: bool | int | float | str) -> None:
    target = message_map[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def request_from_message(
    message: pb.ModelInferRequest, regions: SharedMemoryRegions | None = None
) -> v2.InferRequest:
    """With `regions`, an input may name a registered shared memory region instead of carrying data;
    raw_input_contents then holds one entry per other input."""
    raw = list(message.raw_input_contents)
    in_regions = [shm.names_region(parameters_of(tensor.parameters)) for tensor in message.inputs]
    if any(in_regions):
        regions = shm.regions_or_refuse(regions)
    carried = len(message.inputs) - sum(in_regions)
    if raw and len(raw) != carried:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {carried} inputs; "
            "when used, it must hold one per input not in shared memory"
        )
    inputs = []
    raw_index = 0
    for tensor, in_region in zip(message.inputs, in_regions, strict=True):
        shape = tuple(tensor.shape)
        if in_region and regions is not None:
            data = shm.input_from_region(
                regions, tensor.name, tensor.datatype, shape, parameters_of(tensor.parameters)
            )
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"input '{tensor.name}': contents and raw_input_contents are both set")
            data = tensors.tensor_from_raw(tensor.name, tensor.datatype, shape, raw[raw_index])
            raw_index += 1
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise InvalidArgument(
                    f"input '{tensor.name[:64]}': datatype '{tensor.datatype[:32]}' has no typed contents"
                )
            data = tensors.tensor_from_values(
                tensor.name, tensor.datatype, shape, list(getattr(tensor.contents, field))
            )
        inputs.append(v2.InputTensor(tensor.name, tensor.datatype, shape, data))
    outputs = [
        v2.RequestedOutput.from_parameters(output.name, parameters_of(output.parameters))
        for output in message.outputs
    ]
    return v2.InferRequest(
        model=message.model_name,
        inputs=inputs,
        outputs=outputs,
        version=message.model_version,
        id=message.id,
        parameters=parameters_of(message.parameters),
    )


def response_message(
    response: v2.InferResponse, placed: dict[str, dict[str, Any]] | None = None
) -> pb.ModelInferResponse:
    """Outputs always travel as raw_output_contents (what Triton does; clients read both forms), except
    those `placed` in shared memory: their parameters say where, their raw entry is empty (so that the
    entries stay in the order of the outputs)."""
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for key, value in response.parameters.items():
        set_parameter(message.parameters, key, value)
    for output in response.outputs:
        added = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if placed and output.name in placed:
            for key, value in placed[output.name].items():
                set_parameter(added.parameters, key, value)
            message.raw_output_contents.append(b"")
        elif isinstance(output.data, np.ndarray):
            little = np.ascontiguousarray(output.data, dtype=output.data.dtype.newbyteorder("<"))
            message.raw_output_contents.append(little.tobytes())
        else:
            message.raw_output_contents.append(tensors.encode_bytes_elements(output.data))
    return message


class V2Servicer(TritonExtensions, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: EngineClient, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._engine.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        # tritonclient's is_model_ready raises on any status but OK, so an unknown or unloaded model is
        # answered OK with ready=false (as Triton does).
        try:
            ready = v2.model_ready(self._engine, request.name, request.version)
        except ServiceError:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.RepositoryIndexResponse:
            rows = self._engine.repository_index(request.ready)
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=row.name, version=row.version, state=row.state, reason=row.reason
                    )
                    for row in rows
                ]
            )

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            None,
            context,
            work,
            label="repository",
            route="inference.GRPCInferenceService/RepositoryIndex",
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.RepositoryModelLoadResponse:
            await v2.load(self._engine, request.model_name, repository_parameters(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.model_name,
            context,
            work,
            route="inference.GRPCInferenceService/RepositoryModelLoad",
        )

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.RepositoryModelUnloadResponse:
            await v2.unload(self._engine, request.model_name, repository_parameters(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.model_name,
            context,
            work,
            route="inference.GRPCInferenceService/RepositoryModelUnload",
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.ServerMetadataResponse(
            name=v2.SERVER_NAME, version=v2.server_version(), extensions=list(v2.EXTENSIONS)
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work(call: Observation) -> pb.ModelMetadataResponse:
            meta = v2.metadata_of(self._engine, request.name, request.version)
            return pb.ModelMetadataResponse(
                name=meta.name,
                versions=list(meta.versions),
                platform=meta.platform,
                inputs=[_tensor_metadata(t) for t in meta.inputs],
                outputs=[_tensor_metadata(t) for t in meta.outputs],
            )

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.name,
            context,
            work,
            route="inference.GRPCInferenceService/ModelMetadata",
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        deadline = deadline_of(context)

        async def work(observation: Observation) -> pb.ModelInferResponse:
            return await self._infer(observation, request, deadline)

        request_id = request_id_of(context, request.id)
        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.model_name,
            context,
            work,
            request_id=request_id,
            route="inference.GRPCInferenceService/ModelInfer",
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Up to STREAM_MAX_IN_FLIGHT requests at once, each answered as it completes, with its id
        (calls.py). The stream's deadline, if the client set one, bounds every request on it."""
        deadline = deadline_of(context)
        stream_id = request_id_of(context)

        async def answer_one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            async def work(observation: Observation) -> pb.ModelStreamInferResponse:
                response = await self._infer(observation, request, deadline)
                return pb.ModelStreamInferResponse(infer_response=response)

            failed = partial(stream_error, request)
            request_id = request.id or stream_id
            return await answer_in_stream(
                self._metrics,
                V2_GRPC,
                self._engine,
                request.model_name,
                work,
                failed,
                request_id,
                route="inference.GRPCInferenceService/ModelStreamInfer",
            )

        await serve_stream(request_iterator, context, answer_one, STREAM_MAX_IN_FLIGHT)

    async def _infer(
        self, observation: Observation, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        call = v2.admit(observation, request.model_name, request.model_version, deadline)
        regions = self._engine.shared_memory
        infer_request = request_from_message(request, regions)
        response = await v2.infer(self._engine, call, infer_request)
        return response_message(response, shm.write_outputs(regions, response) if regions else None)


def stream_error(request: pb.ModelInferRequest, error: ServiceError) -> pb.ModelStreamInferResponse:
    """A failed request's answer on ModelStreamInfer, where no gRPC status can carry it: the status the
    unary call would have ended with, the message and an overload's retry hint, with the request's id."""
    wait = retry_after(error)
    hint = f" (retry after {wait:g} s)" if wait is not None else ""
    return pb.ModelStreamInferResponse(
        error_message=f"{status_for(error).grpc.name}: {error.message}{hint}",
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _tensor_metadata(tensor: v2.TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )


def add_v2_servicer(servicer: V2Servicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
