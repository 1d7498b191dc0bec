"""gRPC server: our `effnet.v1.Classifier`, the Open Inference Protocol's `inference.GRPCInferenceService`,
the standard health service (`grpc.health.v1.Health`) and server reflection, on one grpc.aio server in
the same event loop as HTTP. The servicers only translate messages; the engine does the work.

Health: `Check`/`Watch` compute the status when asked (no background task, nothing to refresh):
- "" and the service names: SERVING while the engine is ready (every model loaded, not draining);
- a model's name: SERVING while that model is ready and the engine is not draining.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service._generated import POOL
from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service._generated.inference import grpc_service_pb2
from service.api.auth import bearer_matches
from service.api.grpc.calls import deadline_of, model_label, observed
from service.api.grpc.options import server_options
from service.api.v2.grpc import V2Servicer, add_v2_servicer
from service.core.engine import Engine
from service.errors import ServiceError, retry_after, status_for
from service.metrics import Metrics
from service.schemas import ModelInfo, Route
from service.settings import Settings

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
V2_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
DEFAULT_TOP_K = 5
# Requests of one ClassifyStream being worked on at once; further reads wait (backpressure).
STREAM_MAX_IN_FLIGHT = 64
WATCH_POLL_S = 0.5

_Status = health_pb2.HealthCheckResponse.ServingStatus


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        label = model_label(self._engine, request.model)
        deadline = deadline_of(context)
        return await observed(
            self._metrics, "grpc", label, context, lambda: self._classify(request, deadline)
        )

    async def _classify(
        self, request: classifier_pb2.ClassifyRequest, deadline: float | None
    ) -> classifier_pb2.ClassifyResponse:
        top_k = request.top_k or DEFAULT_TOP_K
        outcome = await self._engine.classify(
            request.model or None,
            list(request.images),
            top_k,
            deadline,
            request.version or None,
            request.budget_ms or None,
        )
        model = outcome.model
        assert model.spec is not None
        t = outcome.timings
        return classifier_pb2.ClassifyResponse(
            id=request.id,
            model=model.name,
            version=model.version or 0,
            weights=model.spec.weights.kind,
            results=[
                classifier_pb2.ImageResult(
                    predictions=[
                        classifier_pb2.Prediction(class_id=p.class_id, label=p.label, score=p.score)
                        for p in predictions
                    ]
                )
                for predictions in outcome.predictions
            ],
            timings=classifier_pb2.Timings(
                preprocess_ms=t.preprocess_ms,
                queue_ms=t.queue_ms,
                inference_ms=t.inference_ms,
                total_ms=t.total_ms,
            ),
            route=route_message(outcome.route) if outcome.route is not None else None,
        )

    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[classifier_pb2.ClassifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Read requests as they come, work on up to STREAM_MAX_IN_FLIGHT at once, answer each as it
        completes. A failed request is answered with `error` set; the stream goes on."""
        deadline = deadline_of(context)
        answers: asyncio.Queue[classifier_pb2.ClassifyResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        working: set[asyncio.Task[None]] = set()

        async def answer(request: classifier_pb2.ClassifyRequest) -> None:
            try:
                await answers.put(await self._stream_item(request, deadline))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(answer(request))
                    working.add(task)
                    task.add_done_callback(working.discard)
                if working:
                    await asyncio.gather(*working)
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read(), name="classify-stream-reader")
        try:
            while (response := await answers.get()) is not None:
                await context.write(response)
            await reader  # surfaces a failed read
        finally:
            for task in (reader, *working):
                task.cancel()

    async def _stream_item(
        self, request: classifier_pb2.ClassifyRequest, deadline: float | None
    ) -> classifier_pb2.ClassifyResponse:
        label = model_label(self._engine, request.model)
        start = asyncio.get_running_loop().time()
        code = grpc.StatusCode.INTERNAL
        try:
            response = await self._classify(request, deadline)
            code = grpc.StatusCode.OK
            return response
        except ServiceError as exc:
            code = status_for(exc).grpc
            return classifier_pb2.ClassifyResponse(
                id=request.id,
                error=classifier_pb2.Error(
                    status=code.value[0],
                    code=exc.code,
                    message=exc.message,
                    retry_after_s=retry_after(exc) or 0,
                ),
            )
        finally:
            elapsed = asyncio.get_running_loop().time() - start
            self._metrics.observe_request("grpc", label, code.name, elapsed)

    async def ListModels(
        self, request: classifier_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ListModelsResponse:
        listing = self._engine.model_list()
        return classifier_pb2.ListModelsResponse(
            default_model=listing.default_model,
            models=[model_info_message(info) for info in listing.models],
            policies=listing.policies,
        )


def route_message(route: Route) -> classifier_pb2.Route:
    return classifier_pb2.Route(
        policy=route.policy,
        budget_ms=route.budget_ms or 0.0,
        predicted_ms=route.predicted_ms or 0.0,
        model=route.model or "",
        fits=bool(route.fits),
        images=[
            classifier_pb2.CascadeImage(
                answered_by=image.answered_by,
                stages=[
                    classifier_pb2.StageConfidence(
                        model=s.model, confidence=s.confidence, escalated=s.escalated
                    )
                    for s in image.stages
                ],
            )
            for image in route.images or []
        ],
    )


def model_info_message(info: ModelInfo) -> classifier_pb2.ModelInfo:
    message = classifier_pb2.ModelInfo(
        name=info.name,
        version=info.version,
        state=info.state,
        ready=info.ready,
        reason=info.reason,
        default=info.default,
        variant=info.variant,
        architecture=info.architecture,
        resolution=info.resolution,
        resize_size=info.resize_size,
        interpolation=info.interpolation,
        num_classes=info.num_classes,
        parameters=info.parameters,
        gmacs=info.gmacs,
        opset=info.opset,
        provider=info.provider,
        kind=info.kind,
        precision=info.precision,
        accuracy_top1=info.accuracy.imagenet_top1 if info.accuracy else None,
        accuracy_source=info.accuracy.source if info.accuracy else None,
        stages=[stage.model for stage in info.stages],
        inputs=[classifier_pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in info.inputs],
        outputs=[classifier_pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in info.outputs],
    )
    if info.normalization is not None:
        message.mean.extend(info.normalization.mean)
        message.std.extend(info.normalization.std)
    if info.weights is not None:
        w = info.weights
        message.weights.CopyFrom(
            classifier_pb2.Weights(kind=w.kind, source=w.source, sha256=w.sha256, seed=w.seed)
        )
    for v in info.versions:
        message.versions.append(
            classifier_pb2.VersionInfo(
                version=v.version,
                state=v.state,
                ready=v.ready,
                reason=v.reason,
                memory_bytes=v.memory_bytes,
                load_seconds=v.load_seconds,
                loaded_at=v.loaded_at,
                last_used=v.last_used,
                in_flight=v.in_flight,
            )
        )
    if info.batcher is not None:
        b = info.batcher
        message.batcher.CopyFrom(
            classifier_pb2.BatcherInfo(
                max_batch_size=b.max_batch_size,
                max_queue_delay_ms=b.max_queue_delay_ms,
                max_queue_size=b.max_queue_size,
                queue_depth=b.queue_depth,
            )
        )
    return message


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health answered from the engine's state at the time of the call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def status(self, service: str) -> int | None:
        """The status of `service`, None when the name is neither a service nor a model."""
        if service in ("", CLASSIFIER_SERVICE, V2_SERVICE):
            up = self._engine.ready
        else:
            record = self._engine.lifecycle.records.get(service)
            if record is None:
                return None
            up = record.serving() is not None and not self._engine.draining
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


def create_grpc_server(engine: Engine, settings: Settings, metrics: Metrics) -> grpc.aio.Server:
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
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
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
