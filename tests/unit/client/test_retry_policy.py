"""The published gRPC retry policy (service/client/retry_policy.py), on a real channel against a stand-in
Classifier that fails its first attempts with UNAVAILABLE (as a proxy does when a replica dies)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service._generated.inference import grpc_service_pb2 as v2_pb
from service._generated.inference import grpc_service_pb2_grpc as v2_pb_grpc
from service.client.retry_policy import RETRY_POLICY, SERVICE_CONFIG_JSON, channel_options


class FlakyClassifier(pb_grpc.ClassifierServicer):
    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.attempts = 0
        self.sizes: list[int] = []

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:  # noqa: N802
        self.attempts += 1
        self.sizes.append(sum(len(image) for image in request.images))
        if self.attempts <= self.failures:
            await context.abort(self.code, "replica went away")
        return pb.ClassifyResponse(model="stand-in")


@pytest.fixture
async def flaky_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, FlakyClassifier]]:
    servicer = FlakyClassifier(*request.param)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_ClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


def big_request() -> pb.ClassifyRequest:
    # Larger than grpc's default per-call retry buffer (256 KiB), as a photo is.
    return pb.ClassifyRequest(model="b0", images=[b"\xff" * (1024 * 1024)])


def test_the_service_config_names_the_idempotent_calls() -> None:
    config = json.loads(SERVICE_CONFIG_JSON)
    method_config, streams = config["methodConfig"]
    names = {(n["service"], n.get("method")) for n in method_config["name"]}
    assert ("effnet.v1.Classifier", "Classify") in names
    assert ("inference.GRPCInferenceService", None) in names
    assert ("effnet.v1.Classifier", "ClassifyStream") not in names
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    # V2's stream overrides its service's entry, without a retry policy.
    assert streams == {"name": [{"service": "inference.GRPCInferenceService", "method": "ModelStreamInfer"}]}


class FlakyV2(v2_pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer and ModelStreamInfer fail their first attempt with UNAVAILABLE."""

    def __init__(self) -> None:
        self.attempts = {"ModelInfer": 0, "ModelStreamInfer": 0}

    async def ModelInfer(self, request: v2_pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self.attempts["ModelInfer"] += 1
        if self.attempts["ModelInfer"] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica went away")
        return v2_pb.ModelInferResponse(id=request.id)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[v2_pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v2_pb.ModelStreamInferResponse]:
        self.attempts["ModelStreamInfer"] += 1
        if self.attempts["ModelStreamInfer"] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica went away")
        async for request in request_iterator:
            yield v2_pb.ModelStreamInferResponse(infer_response=v2_pb.ModelInferResponse(id=request.id))


async def test_v2_calls_are_retried_and_its_stream_is_not() -> None:
    servicer = FlakyV2()
    server = grpc.aio.server()
    v2_pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
            stub = v2_pb_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(v2_pb.ModelInferRequest(id="u"), timeout=10)
            assert reply.id == "u" and servicer.attempts["ModelInfer"] == 2

            async def one() -> AsyncIterator[v2_pb.ModelInferRequest]:
                yield v2_pb.ModelInferRequest(id="s")

            with pytest.raises(grpc.aio.AioRpcError) as failed:
                _ = [r async for r in stub.ModelStreamInfer(one(), timeout=10)]
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert servicer.attempts["ModelStreamInfer"] == 1
    finally:
        await server.stop(0)


@pytest.mark.parametrize("flaky_server", [(RETRY_POLICY["maxAttempts"] - 1,)], indirect=True)
async def test_unavailable_is_retried_with_the_whole_request(
    flaky_server: tuple[str, FlakyClassifier],
) -> None:
    target, servicer = flaky_server
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        reply = await pb_grpc.ClassifierStub(channel).Classify(big_request(), timeout=10)
    assert reply.model == "stand-in"
    assert servicer.attempts == RETRY_POLICY["maxAttempts"]
    assert set(servicer.sizes) == {1024 * 1024}


@pytest.mark.parametrize("flaky_server", [(1,)], indirect=True)
async def test_without_the_policy_the_first_unavailable_fails(
    flaky_server: tuple[str, FlakyClassifier],
) -> None:
    target, servicer = flaky_server
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pb_grpc.ClassifierStub(channel).Classify(big_request(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == 1


@pytest.mark.parametrize("flaky_server", [(1, grpc.StatusCode.INVALID_ARGUMENT)], indirect=True)
async def test_other_errors_are_not_retried(flaky_server: tuple[str, FlakyClassifier]) -> None:
    target, servicer = flaky_server
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pb_grpc.ClassifierStub(channel).Classify(big_request(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.attempts == 1
