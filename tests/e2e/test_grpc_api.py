"""Our own gRPC API (effnet.v1.Classifier), health and reflection against the real server, through
stubs generated from proto/."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

TIGER_CAT_FAMILY = range(281, 286)


async def classify(address: str, request: pb.ClassifyRequest, seconds: float = 60) -> pb.ClassifyResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await pb_grpc.ClassifierStub(channel).Classify(request, timeout=seconds)


async def status_of(address: str, request: pb.ClassifyRequest, seconds: float = 60) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await classify(address, request, seconds)
    return caught.value.code()


async def test_classify_matches_http(live_server, real_photos) -> None:
    request = pb.ClassifyRequest(
        model="lite0", top_k=3, images=[real_photos["chelsea"], real_photos["coffee"]]
    )
    response = await classify(live_server.grpc_address, request)
    assert response.model == "lite0" and response.version == 1 and response.weights == "imagenet"
    assert len(response.results) == 2
    cat, coffee = ([p.class_id for p in r.predictions] for r in response.results)
    assert cat[0] in TIGER_CAT_FAMILY and coffee[0] == 967
    assert response.timings.total_ms > 0

    for index, name in enumerate(("chelsea", "coffee")):
        async with httpx.AsyncClient(timeout=60) as client:
            http = await client.post(
                f"{live_server.http_url}/classify",
                params={"variant": "lite0", "top_k": 3},
                content=real_photos[name],
                headers={"content-type": "image/jpeg"},
                timeout=60,
            )
        assert http.status_code == 200, http.text
        expected = http.json()["results"][0]["predictions"]
        got = response.results[index].predictions
        assert [p.class_id for p in got] == [p["class_id"] for p in expected]
        assert [p.label for p in got] == [p["label"] for p in expected]
        assert [p.score for p in got] == pytest.approx([p["score"] for p in expected], abs=1e-6)


async def test_default_top_k_is_five(live_server, real_photos) -> None:
    response = await classify(
        live_server.grpc_address, pb.ClassifyRequest(model="b0", images=[real_photos["coffee"]])
    )
    assert len(response.results[0].predictions) == 5


@pytest.mark.parametrize(
    "request_kwargs, code",
    [
        ({"model": "b0", "images": [b"not an image"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": "b0", "top_k": 1001, "images": [b"x"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": "b0", "top_k": -1, "images": [b"x"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": "b0", "images": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": "b9", "images": [b"x"]}, grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_error_statuses(live_server, request_kwargs, code) -> None:
    assert await status_of(live_server.grpc_address, pb.ClassifyRequest(**request_kwargs)) == code


async def test_stream_answers_every_request_with_its_id(live_server, real_photos) -> None:
    count = 24

    async def requests() -> AsyncIterator[pb.ClassifyRequest]:
        for i in range(count):
            image = b"broken" if i == 5 else real_photos["coffee" if i % 2 else "chelsea"]
            yield pb.ClassifyRequest(id=f"r{i}", model="lite0", top_k=1, images=[image])

    async with grpc.aio.insecure_channel(live_server.grpc_address) as channel:
        responses = [r async for r in pb_grpc.ClassifierStub(channel).ClassifyStream(requests(), timeout=120)]
    by_id = {r.id: r for r in responses}
    assert sorted(by_id) == sorted(f"r{i}" for i in range(count))
    assert by_id["r5"].error.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["r5"].error.code == "bad_image" and not by_id["r5"].results
    assert by_id["r1"].results[0].predictions[0].class_id == 967
    assert by_id["r0"].results[0].predictions[0].class_id in TIGER_CAT_FAMILY


async def test_list_models(live_server) -> None:
    async with grpc.aio.insecure_channel(live_server.grpc_address) as channel:
        listing = await pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    async with httpx.AsyncClient(timeout=10) as client:
        http = (await client.get(f"{live_server.http_url}/v1/models")).json()
    assert listing.default_model == http["default_model"]
    models = {m.name: m for m in listing.models}
    assert set(models) == {m["name"] for m in http["models"]} == {"b0", "lite0"}
    lite0 = models["lite0"]
    assert lite0.ready and lite0.resolution == 224 and lite0.num_classes == 1000
    assert lite0.weights.kind == "imagenet" and models["b0"].weights.kind == "random"
    assert [t.name for t in lite0.outputs] == ["logits", "probabilities", "features", "cam", "cam_classes"]
    assert lite0.batcher.max_batch_size >= 1
    for name, model in models.items():  # the batcher as HTTP describes it (0: no one-thread session)
        described = next(m["batcher"] for m in http["models"] if m["name"] == name)
        assert model.batcher.instances == described["instances"] >= 1
        assert model.batcher.overlap_run_size == (described["overlap_run_size"] or 0)


async def test_health_overall_and_per_model(live_server) -> None:
    async with grpc.aio.insecure_channel(live_server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "b0", "lite0", "effnet.v1.Classifier", "inference.GRPCInferenceService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="b9"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="lite0"), timeout=10)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_reflection_lists_and_describes_services(live_server) -> None:
    async with grpc.aio.insecure_channel(live_server.grpc_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask(**kwargs) -> reflection_pb2.ServerReflectionResponse:
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(**kwargs)]), timeout=10
            )
            return [r async for r in call][0]

        listing = await ask(list_services="")
        names = {s.name for s in listing.list_services_response.service}
        assert {"effnet.v1.Classifier", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        for symbol in ("effnet.v1.Classifier", "inference.GRPCInferenceService"):
            found = await ask(file_containing_symbol=symbol)
            assert found.file_descriptor_response.file_descriptor_proto, symbol


async def test_overload_deadline_and_clean_stop(server_factory, model_repository, real_photos) -> None:
    """A server of its own: a queue of 2 images, and batches held up to 300 ms for company, so that a
    lone request with a shorter deadline is certain to expire while it waits in the queue."""
    server = server_factory(
        model_repository, "--models", "b0", "--max-queue-size", "2", "--max-queue-delay-ms", "300"
    )
    address = server.grpc_address
    image = real_photos["coffee"]

    async def images_run() -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{server.http_url}/metrics")).text
        found = re.findall(r'^effnet_batch_size_sum\{model="b0"\} (\S+)$', text, re.M)
        return float(found[0]) if found else 0.0

    # Three images never fit a queue of two: rejected at once, before any decoding.
    request = pb.ClassifyRequest(model="b0", images=[image] * 3)
    assert await status_of(address, request) == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The client's deadline travels into the batcher: the request expires there and is never run.
    before = await images_run()
    request = pb.ClassifyRequest(model="b0", images=[image])
    assert await status_of(address, request, seconds=0.1) == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.5)  # past the batch delay: had it been queued still, it would have run by now
    assert await images_run() == before
    response = await classify(address, request, seconds=30)
    assert len(response.results) == 1 and await images_run() == before + 1

    # SIGTERM: in-flight work drains and the process exits cleanly.
    assert server.stop() == 0


@pytest.mark.parametrize("protocol", ["--grpc", "--http"])
def test_cli_client_prints_a_table(live_server, real_photos, tmp_path, capsys, protocol) -> None:
    from service.client.cli import main

    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(real_photos["coffee"])
    url = live_server.grpc_address if protocol == "--grpc" else live_server.http_url
    assert main([str(photo), "--model", "lite0", protocol, "--url", url, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "espresso" in out and "967" in out and "coffee.jpg" in out
    assert main([str(photo), "--model", "b9", protocol, "--url", url]) == 1
    assert "unknown model" in capsys.readouterr().err
