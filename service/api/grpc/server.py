"""The gRPC server: our `effnet.v1.Classifier` (classifier.py), the Open Inference Protocol's
`inference.GRPCInferenceService` (api/v2/over_grpc.py), the standard health service (health.py) and server
reflection, on one grpc.aio server in the same event loop as HTTP; the API key, TLS and channel
options (options.py) apply to all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service._generated import POOL
from service._generated.effnet.v1 import classifier_pb2_grpc
from service.api.auth import bearer_matches
from service.api.grpc.classifier import ClassifierServicer
from service.api.grpc.health import CLASSIFIER_SERVICE, HEALTH_SERVICE, V2_SERVICE, HealthServicer
from service.api.grpc.options import server_options
from service.api.v2.over_grpc import V2Servicer, add_v2_servicer
from service.core.client import EngineClient
from service.metrics import Metrics
from service.settings import Settings


class _ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """With an API key configured, every RPC but health (ours and V2's) and reflection needs the metadata
    `authorization: Bearer KEY` (as HTTP's header). With an admin key, model load and unload need that
    key instead."""

    _open = (
        f"/{HEALTH_SERVICE}/",
        f"/{reflection.SERVICE_NAME}/",
        f"/{V2_SERVICE}/ServerLive",
        f"/{V2_SERVICE}/ServerReady",
    )

    _control = (f"/{V2_SERVICE}/RepositoryModelLoad", f"/{V2_SERVICE}/RepositoryModelUnload")

    def __init__(self, api_key: str | None, admin_api_key: str | None) -> None:
        self._key = api_key.encode() if api_key is not None else None
        self._admin_key = admin_api_key.encode() if admin_api_key is not None else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._open):
            return handler
        key = self._key
        if self._admin_key is not None and details.method in self._control:
            key = self._admin_key
        if key is None:
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if bearer_matches(given, key):
            return handler
        return _deny(handler)


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")
        yield  # pragma: no cover - makes this an async generator

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(
        streaming if handler.response_streaming else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _reflection_pool() -> Any:
    """A descriptor pool holding every service we offer. Our generated modules use a private pool
    (see service.protogen), so reflection gets one with those files and the standard ones."""
    pool = POOL
    for module in (health_pb2, reflection_pb2):
        try:
            pool.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            pool.Add(proto)
    return pool


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (None: plaintext). With a client CA, clients
    must present a certificate it signed (mutual TLS). Unreadable files fail start-up (OSError)."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    pair = (settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())
    client_ca = settings.grpc_tls_client_ca
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )


def create_grpc_server(
    engine: EngineClient, settings: Settings, metrics: Metrics, reuse_port: bool = False
) -> grpc.aio.Server:
    """All services added and the port bound, not started: `await server.start()`, and on shutdown
    `await server.stop(grace)`. Health turns NOT_SERVING by itself once the engine drains."""
    interceptors = []
    if settings.api_key is not None or settings.admin_api_key is not None:
        interceptors.append(
            _ApiKeyInterceptor(
                settings.api_key.get_secret_value() if settings.api_key else None,
                settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
            )
        )
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings, reuse_port))
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierServicer(engine, metrics), server)
    add_v2_servicer(V2Servicer(engine, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(engine), server)
    reflection.enable_server_reflection(
        (CLASSIFIER_SERVICE, V2_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME),
        server,
        pool=_reflection_pool(),
    )
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return server
