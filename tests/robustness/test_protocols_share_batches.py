"""Requests that arrive over different protocols meet in one queue and share one batch; health and
readiness over both protocols follow the engine into draining."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from tests.robustness.conftest import TINY, InProcess
from tests.tiny_model import png
from tests.waiting import until

RED, GREEN, BLUE, GREY = (250, 5, 5), (5, 250, 5), (5, 5, 250), (120, 120, 120)


async def test_http_our_grpc_and_v2_grpc_requests_share_one_batch(inprocess: InProcess) -> None:
    runner = inprocess.runner
    runner.gate.clear()  # hold the first batch, so the next requests queue up behind it
    async with (
        httpx.AsyncClient(base_url=inprocess.http_url, timeout=30) as http,
        grpc.aio.insecure_channel(inprocess.grpc_address) as channel,
    ):
        triton = triton_grpc.InferenceServerClient(inprocess.grpc_address)

        def classify_http(colour: tuple[int, int, int]):  # noqa: ANN202
            return http.post(
                f"/classify?variant={TINY}&top_k=1",
                content=png(colour),
                headers={"content-type": "image/png"},
            )

        first = asyncio.create_task(classify_http(GREY))
        await until(runner.entered.is_set, what="the first batch to start")

        image = triton_grpc.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png(BLUE)], dtype=object))
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        queued = [
            asyncio.create_task(classify_http(RED)),
            asyncio.ensure_future(
                stub.Classify(classifier_pb2.ClassifyRequest(model=TINY, top_k=1, images=[png(GREEN)]))
            ),
            asyncio.create_task(triton.infer(TINY, [image])),
        ]
        await until(lambda: inprocess.batcher.queue_depth == 3, what="three queued images")
        runner.gate.set()
        grey, red, green, blue = await asyncio.gather(first, *queued)
        await triton.close()

    assert runner.batch_sizes == [1, 3], "the three protocols' images did not run as one batch"
    assert grey.json()["results"][0]["predictions"][0]["label"] == "grey"
    assert red.json()["results"][0]["predictions"][0]["label"] == "red"
    assert green.results[0].predictions[0].label == "green"
    assert int(np.argmax(blue.as_numpy("probabilities")[0])) == 2  # blue


async def test_health_turns_not_serving_once_draining_begins(inprocess: InProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(inprocess.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", TINY):
            assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == serving
        inprocess.engine.begin_drain()
        for service in ("", TINY):
            status = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING, service
    async with httpx.AsyncClient(base_url=inprocess.http_url, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
