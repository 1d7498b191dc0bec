"""The Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient.grpc, sync and
aio), and HTTP and gRPC traffic sharing the batcher."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
from tritonclient.utils import InferenceServerException

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service._generated.inference import grpc_service_pb2 as v2_pb
from service._generated.inference import grpc_service_pb2_grpc as v2_pb_grpc
from service.api.v2.over_grpc import STREAM_MAX_IN_FLIGHT
from tests.conftest import parse_classification

pytestmark = pytest.mark.slow


def image_input(images: list[bytes]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def test_health_and_metadata(live_server) -> None:
    client = triton_grpc.InferenceServerClient(live_server.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lite0") and not client.is_model_ready("lite0", "3")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("b0", as_json=True)
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("pixels", "UINT8"), ("image", "BYTES")]
    assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 3, 224, 224]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_image_bytes_with_classification_equal_classify(live_server, real_photos) -> None:
    client = triton_grpc.InferenceServerClient(live_server.grpc_address)
    photos = [real_photos["chelsea"], real_photos["coffee"]]
    outputs = [triton_grpc.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer("lite0", [image_input(photos)], outputs=outputs, request_id="g1")
    assert result.get_response().id == "g1"
    for row, photo in zip(result.as_numpy("probabilities"), photos, strict=True):
        http = httpx.post(
            f"{live_server.http_url}/classify",
            params={"variant": "lite0", "top_k": 3},
            content=photo,
            headers={"content-type": "image/jpeg"},
            timeout=60,
        ).json()["results"][0]["predictions"]
        got = [parse_classification(item) for item in row]
        assert [(i, label) for _, i, label in got] == [(p["class_id"], p["label"]) for p in http]
        assert [s for s, _, _ in got] == pytest.approx([p["score"] for p in http], abs=1e-5)


def test_pixels_raw_and_typed_contents_agree(live_server) -> None:
    client = triton_grpc.InferenceServerClient(live_server.grpc_address)
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    tensor = triton_grpc.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    raw = client.infer("lite0", [tensor]).as_numpy("logits")
    assert raw.shape == (1, 1000)

    # The same tensor as typed contents (uint_contents), sent with our own generated stub.
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="lite0")
    request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape).contents.uint_contents.extend(
        pixels.ravel().tolist()
    )
    request.outputs.add(name="logits")
    with grpc.insecure_channel(live_server.grpc_address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 1000)
    np.testing.assert_allclose(typed, raw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, shape, datatype, code",
    [
        ("pixels", [1, 3, 8, 8], "UINT8", "StatusCode.INVALID_ARGUMENT"),
        ("pixels", [1, 3, 224, 224], "FP32", "StatusCode.INVALID_ARGUMENT"),
        ("tokens", [1], "INT32", "StatusCode.INVALID_ARGUMENT"),
    ],
)
def test_bad_inputs(live_server, name, shape, datatype, code) -> None:
    client = triton_grpc.InferenceServerClient(live_server.grpc_address)
    tensor = triton_grpc.InferInput(name, shape, datatype)
    dtype = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32}[datatype]
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("b0", [tensor])
    assert caught.value.status() == code


def test_stream_answers_every_request_once_with_its_id(live_server, real_photos) -> None:
    """Triton's streaming API (ModelStreamInfer): many requests on one stream, each answered once, as
    they complete; a failed request is answered with its error and the stream goes on."""
    answers: list[tuple[str | None, str | None]] = []  # (id, error)
    labels: dict[str, int] = {}

    def on_answer(result, error) -> None:
        if error is not None:
            answers.append((None, str(error)))
            return
        response = result.get_response()
        answers.append((response.id, None))
        labels[response.id] = parse_classification(result.as_numpy("probabilities")[0][0])[1]

    client = triton_grpc.InferenceServerClient(live_server.grpc_address)
    outputs = [triton_grpc.InferRequestedOutput("probabilities", class_count=1)]
    client.start_stream(callback=on_answer)
    try:
        for i in range(20):
            photo = real_photos["coffee" if i % 2 else "chelsea"]
            model = "nope" if i == 7 else "lite0"
            image = [b"broken"] if i == 11 else [photo]
            client.async_stream_infer(model, [image_input(image)], outputs=outputs, request_id=f"s{i}")
    finally:
        client.stop_stream()  # closes the sending side and waits for every answer
    client.close()

    ids = sorted(i for i, e in answers if e is None)
    errors = sorted(e for i, e in answers if e is not None)
    assert ids == sorted(f"s{i}" for i in range(20) if i not in (7, 11))
    assert len(errors) == 2
    assert any(e.startswith("NOT_FOUND") and "nope" in e for e in errors), errors
    assert any(e.startswith("INVALID_ARGUMENT") for e in errors), errors
    assert {labels[f"s{i}"] for i in (1, 3, 5)} == {967}  # coffee: espresso


async def test_stream_over_the_raw_stub_keeps_ids_on_errors(live_server) -> None:
    """With our own stub (no tritonclient): an error's answer still names its request, and more
    requests than the stream holds at once are all answered exactly once (the reads wait)."""
    pixels = np.zeros((1, 3, 224, 224), dtype=np.uint8).tobytes()
    count = STREAM_MAX_IN_FLIGHT + 40

    async def requests():
        for i in range(count):
            request = v2_pb.ModelInferRequest(model_name="lite0", id=f"p{i}")
            shape = [1, 3, 224, 224] if i != 3 else [1, 3, 8, 8]
            request.inputs.add(name="pixels", datatype="UINT8", shape=shape)
            request.raw_input_contents.append(pixels if i != 3 else bytes(3 * 8 * 8))
            yield request

    async with grpc.aio.insecure_channel(live_server.grpc_address) as channel:
        stub = v2_pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [a async for a in stub.ModelStreamInfer(requests(), timeout=300)]
    by_id = {a.infer_response.id: a for a in answers}
    assert len(answers) == count and sorted(by_id) == sorted(f"p{i}" for i in range(count))
    assert by_id["p3"].error_message.startswith("INVALID_ARGUMENT") and not by_id["p3"].infer_response.outputs
    rest = [a for i, a in by_id.items() if i != "p3"]
    served = [a for a in rest if not a.error_message]
    assert all(a.infer_response.outputs for a in served) and served
    # More requests than the model's queue holds arrive at once: the rest are refused as overload, each
    # with a retry hint, never dropped.
    refused = [a.error_message for a in rest if a.error_message]
    assert all(e.startswith("RESOURCE_EXHAUSTED") and "(retry after" in e for e in refused), refused[:3]


async def test_aio_client(live_server, real_photos) -> None:
    client = triton_grpc_aio.InferenceServerClient(live_server.grpc_address)
    try:
        assert await client.is_server_ready()
        outputs = [triton_grpc_aio.InferRequestedOutput("logits", class_count=1)]
        result = await client.infer("lite0", [image_input([real_photos["coffee"]])], outputs=outputs)
        assert parse_classification(result.as_numpy("logits")[0][0])[1] == 967
    finally:
        await client.close()


async def test_http_and_grpc_requests_share_batches(live_server, real_photos) -> None:
    """Concurrent single-image requests over both protocols end up in the same queue: fewer batches
    run than images, so the batcher grouped requests regardless of how they arrived."""

    async def batch_counts(client: httpx.AsyncClient) -> tuple[float, float]:
        text = (await client.get(f"{live_server.http_url}/metrics")).text
        count = re.search(r'^effnet_batch_size_count\{model="b0"\} (\S+)$', text, re.M)
        total = re.search(r'^effnet_batch_size_sum\{model="b0"\} (\S+)$', text, re.M)
        return (float(count[1]) if count else 0.0, float(total[1]) if total else 0.0)

    image = real_photos["coffee"]
    n = 16
    async with (
        httpx.AsyncClient(timeout=60) as client,
        grpc.aio.insecure_channel(live_server.grpc_address) as ch,
    ):
        stub = pb_grpc.ClassifierStub(ch)
        batches_before, images_before = await batch_counts(client)
        http_calls = [
            client.post(
                f"{live_server.http_url}/classify",
                params={"variant": "b0", "top_k": 1},
                content=image,
                headers={"content-type": "image/jpeg"},
            )
            for _ in range(n)
        ]
        grpc_calls = [
            stub.Classify(pb.ClassifyRequest(model="b0", top_k=1, images=[image])) for _ in range(n)
        ]
        results = await asyncio.gather(*http_calls, *grpc_calls)
        assert all(r.status_code == 200 for r in results[:n])
        batches_after, images_after = await batch_counts(client)
    assert images_after - images_before == 2 * n
    assert batches_after - batches_before < 2 * n
