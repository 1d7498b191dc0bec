"""`effnet.v1.Classifier`, our own gRPC API: Classify, ClassifyStream (many requests in flight on one
stream, answered as they complete) and ListModels. It translates messages; the engine does the work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import grpc

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service.api.grpc.calls import answer, answer_in_stream, deadline_of, request_id_of, serve_stream
from service.api.observe import Observation, grpc_codes
from service.core.client import EngineClient
from service.core.explain import vectors
from service.core.image_requests import DEFAULT_TOP_K
from service.errors import ServiceError, retry_after, status_for
from service.metrics import Metrics
from service.runtime.priorities import parse_priority
from service.schemas import ModelInfo, Route

GRPC = grpc_codes("grpc")
# Requests of one ClassifyStream held at once, until their answers are written; further reads wait.
STREAM_MAX_IN_FLIGHT = 64


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, engine: EngineClient, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        deadline = deadline_of(context)

        async def work(observation: Observation) -> classifier_pb2.ClassifyResponse:
            return await self._classify(observation, request, deadline)

        request_id = request_id_of(context, request.id)
        return await answer(
            self._metrics,
            GRPC,
            self._engine,
            request.model or None,
            context,
            work,
            request_id=request_id,
            route="effnet.v1.Classifier/Classify",
        )

    async def _classify(
        self, observation: Observation, request: classifier_pb2.ClassifyRequest, deadline: float | None
    ) -> classifier_pb2.ClassifyResponse:
        call = observation.admit(
            request.version or None,
            top_k=request.top_k or DEFAULT_TOP_K,
            budget_ms=request.budget_ms or None,
            priority=parse_priority(request.priority),
            deadline=deadline,
        )
        outcome = await self._engine.classify(call, list(request.images), explain=request.explain)
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
                        classifier_pb2.Prediction(
                            class_id=p.class_id, label=p.label, score=p.score, cam=map_message(p.cam)
                        )
                        for p in predictions
                    ],
                    cached=bool(outcome.cached) and outcome.cached[i],
                )
                for i, predictions in enumerate(outcome.predictions)
            ],
            timings=classifier_pb2.Timings(
                preprocess_ms=t.preprocess_ms,
                queue_ms=t.queue_ms,
                inference_ms=t.inference_ms,
                total_ms=t.total_ms,
            ),
            route=route_message(outcome.route) if outcome.route is not None else None,
            cached=outcome.all_cached,
        )

    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[classifier_pb2.ClassifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Up to STREAM_MAX_IN_FLIGHT requests at once, each answered as it completes (calls.py). A
        failed request is answered with `error` set; the stream goes on."""
        deadline = deadline_of(context)
        stream_id = request_id_of(context)

        async def answer_one(request: classifier_pb2.ClassifyRequest) -> classifier_pb2.ClassifyResponse:
            async def work(observation: Observation) -> classifier_pb2.ClassifyResponse:
                return await self._classify(observation, request, deadline)

            failed = partial(stream_error, request)
            request_id = request.id or stream_id
            return await answer_in_stream(
                self._metrics,
                GRPC,
                self._engine,
                request.model or None,
                work,
                failed,
                request_id,
                route="effnet.v1.Classifier/ClassifyStream",
            )

        await serve_stream(request_iterator, context, answer_one, STREAM_MAX_IN_FLIGHT)

    async def Embed(
        self, request: classifier_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.EmbedResponse:
        deadline = deadline_of(context)

        async def work(observation: Observation) -> classifier_pb2.EmbedResponse:
            call = observation.admit(
                request.version or None,
                budget_ms=request.budget_ms or None,
                priority=parse_priority(request.priority),
                deadline=deadline,
            )
            outcome = await self._engine.embed(call, list(request.images))
            found = vectors(outcome, request.normalize)
            t = outcome.timings
            return classifier_pb2.EmbedResponse(
                id=request.id,
                model=outcome.model.name,
                version=outcome.model.version or 0,
                dimension=int(found.shape[1]),
                normalized=request.normalize,
                embeddings=[classifier_pb2.Embedding(vector=row) for row in found],
                timings=classifier_pb2.Timings(
                    preprocess_ms=t.preprocess_ms,
                    queue_ms=t.queue_ms,
                    inference_ms=t.inference_ms,
                    total_ms=t.total_ms,
                ),
                route=route_message(outcome.route) if outcome.route is not None else None,
            )

        request_id = request_id_of(context, request.id)
        return await answer(
            self._metrics,
            GRPC,
            self._engine,
            request.model or None,
            context,
            work,
            request_id=request_id,
            route="effnet.v1.Classifier/Embed",
        )

    async def ListModels(
        self, request: classifier_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ListModelsResponse:
        listing = self._engine.model_list()
        return classifier_pb2.ListModelsResponse(
            default_model=listing.default_model,
            models=[model_info_message(info) for info in listing.models],
            policies=listing.policies,
        )


def stream_error(
    request: classifier_pb2.ClassifyRequest, exc: ServiceError
) -> classifier_pb2.ClassifyResponse:
    """A failed request's answer on ClassifyStream: its id and `error`."""
    return classifier_pb2.ClassifyResponse(
        id=request.id,
        error=classifier_pb2.Error(
            status=status_for(exc).grpc.value[0],
            code=exc.code,
            message=exc.message,
            retry_after_s=retry_after(exc) or 0,
        ),
    )


def map_message(cam: list[list[float]] | None) -> classifier_pb2.ActivationMap | None:
    if cam is None:
        return None
    values = [value for row in cam for value in row]
    return classifier_pb2.ActivationMap(height=len(cam), width=len(cam[0]) if cam else 0, values=values)


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
        measured_dataset=info.measured.dataset if info.measured else None,
        measured_images=info.measured.images if info.measured else None,
        measured_top1=info.measured.top1 if info.measured else None,
        measured_top5=info.measured.top5 if info.measured else None,
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
                recorded_as=v.recorded_as,
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
                instances=b.instances,
                overlap_run_size=b.overlap_run_size or 0,
            )
        )
    return message
