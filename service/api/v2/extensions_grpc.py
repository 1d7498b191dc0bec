"""Triton's protocol extensions over gRPC: model configuration, statistics and shared memory, as a
mixin of the V2 servicer (over_grpc.py). Each answers the document the transport-free modules build
(config.py, stats.py, shared_memory.py), parsed into the message with the same field names."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from service._generated.inference import grpc_service_pb2 as pb
from service.api.grpc.calls import answer
from service.api.observe import Observation, grpc_codes
from service.api.v2 import config as model_configs
from service.api.v2 import shared_memory as shm
from service.api.v2 import stats
from service.core.client import EngineClient
from service.metrics import Metrics

V2_GRPC = grpc_codes("v2-grpc")


class TritonExtensions:
    """Needs `_engine` and `_metrics` (the V2 servicer's)."""

    _engine: EngineClient
    _metrics: Metrics

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work(call: Observation) -> pb.ModelConfigResponse:
            document = model_configs.model_config(self._engine, request.name, request.version)
            response = pb.ModelConfigResponse()
            json_format.ParseDict(document, response.config)
            return response

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.name,
            context,
            work,
            route="inference.GRPCInferenceService/ModelConfig",
        )

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.ModelStatisticsResponse:
            document = stats.model_statistics(
                self._engine, self._metrics.statistics, request.name, request.version
            )
            return json_format.ParseDict(document, pb.ModelStatisticsResponse())

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            request.name or None,
            context,
            work,
            label=None if request.name else "statistics",
            route="inference.GRPCInferenceService/ModelStatistics",
        )

    # ------------------------------------------------------------------ system shared memory
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.SystemSharedMemoryStatusResponse:
            response = pb.SystemSharedMemoryStatusResponse()
            for row in shm.status_rows(shm.regions_or_refuse(self._engine.shared_memory), request.name):
                response.regions[row["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**row)
                )
            return response

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            None,
            context,
            work,
            label="shared_memory",
            route="inference.GRPCInferenceService/SystemSharedMemoryStatus",
        )

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.SystemSharedMemoryRegisterResponse:
            shm.regions_or_refuse(self._engine.shared_memory).register(
                request.name, request.key, request.offset, request.byte_size
            )
            return pb.SystemSharedMemoryRegisterResponse()

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            None,
            context,
            work,
            label="shared_memory",
            route="inference.GRPCInferenceService/SystemSharedMemoryRegister",
        )

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.SystemSharedMemoryUnregisterResponse:
            shm.regions_or_refuse(self._engine.shared_memory).unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            None,
            context,
            work,
            label="shared_memory",
            route="inference.GRPCInferenceService/SystemSharedMemoryUnregister",
        )

    # ------------------------------------------------------------------ CUDA shared memory: not offered
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.CudaSharedMemoryStatusResponse()  # none is ever registered

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work(call: Observation) -> pb.CudaSharedMemoryRegisterResponse:
            shm.refuse_cuda()
            return pb.CudaSharedMemoryRegisterResponse()  # pragma: no cover - refuse_cuda raises

        return await answer(
            self._metrics,
            V2_GRPC,
            self._engine,
            None,
            context,
            work,
            label="shared_memory",
            route="inference.GRPCInferenceService/CudaSharedMemoryRegister",
        )

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()  # nothing to unregister
