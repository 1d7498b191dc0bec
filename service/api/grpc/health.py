"""`grpc.health.v1.Health`, answered from the engine's state at the time of the call (no background task,
nothing to refresh):
- "" and the service names: SERVING while the engine is ready (every model loaded, not draining);
- a model's name: SERVING while that model is ready and the engine is not draining.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._generated.effnet.v1 import classifier_pb2
from service._generated.inference import grpc_service_pb2
from service.core.client import EngineClient

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
V2_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
WATCH_POLL_S = 0.5

_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health answered from the engine's state at the time of the call."""

    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine

    def status(self, service: str) -> int | None:
        """The status of `service`, None when the name is neither a service nor a model."""
        if service in ("", CLASSIFIER_SERVICE, V2_SERVICE):
            up = self._engine.ready
        else:
            serving = self._engine.serving(service)
            if serving is None:
                return None
            up = serving
        return _Status.SERVING if up else _Status.NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service[:64]}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = None
        while True:
            status = self.status(request.service)
            current = _Status.SERVICE_UNKNOWN if status is None else status
            if current != last:
                yield health_pb2.HealthCheckResponse(status=current)
                last = current
            await asyncio.sleep(WATCH_POLL_S)
