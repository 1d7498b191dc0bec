"""The response cache end to end: a real server on lite0 (ImageNet weights) with `"response_cache": true`,
asked over HTTP, our gRPC and both V2 transports (tritonclient); then over a real Redis shared by two
servers; then a version swap through the repository API. Cached answers equal uncached ones."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from tests.e2e.conftest import LiveServer, ServerFactory, classify
from tests.redis_process import RedisProcess
from tests.waiting import until_sync

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cached_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("cached")
    shutil.copytree(model_repository / "lite0", repository / "lite0")
    (repository / "lite0" / "config.json").write_text(json.dumps({"response_cache": True}))
    return repository


@pytest.fixture(scope="module")
def cached_server(server_factory: ServerFactory, cached_repository: Path) -> LiveServer:
    return server_factory(cached_repository, "--model-control", "explicit", "--models", "lite0")


def predictions(body: dict) -> list[list[tuple[int, float]]]:  # type: ignore[type-arg]
    return [[(p["class_id"], p["score"]) for p in r["predictions"]] for r in body["results"]]


def test_http_and_grpc_answers_say_cached_and_equal_the_first(
    cached_server: LiveServer, real_photos: dict[str, bytes]
) -> None:
    photo = real_photos["chelsea"]
    first = classify(cached_server, photo, top_k=5, variant="lite0")
    again = classify(cached_server, photo, top_k=5, variant="lite0")
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["cached"] is False and again.json()["cached"] is True
    assert again.json()["results"][0]["cached"] is True
    assert predictions(again.json()) == predictions(first.json())
    assert again.json()["timings"]["inference_ms"] == 0
    assert 281 <= again.json()["results"][0]["predictions"][0]["class_id"] <= 285  # a cat, from the cache

    with grpc.insecure_channel(cached_server.grpc_address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        reply = stub.Classify(pb.ClassifyRequest(model="lite0", top_k=5, images=[photo], priority="high"))
    assert reply.cached and reply.results[0].cached
    assert [(p.class_id, pytest.approx(p.score)) for p in reply.results[0].predictions] == predictions(
        first.json()
    )[0]

    metrics = httpx.get(f"{cached_server.http_url}/metrics").text
    assert 'effnet_cache_lookups_total{backend="memory",model="lite0",result="hit"}' in metrics


def test_v2_image_and_pixels_say_cached_in_their_parameters(
    cached_server: LiveServer, real_photos: dict[str, bytes]
) -> None:
    photo = real_photos["coffee"]
    client = triton_http.InferenceServerClient(cached_server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
    first = client.infer("lite0", [tensor])
    second = client.infer("lite0", [tensor], priority=1)
    assert "cached" not in (first.get_response().get("parameters") or {})
    assert second.get_response()["parameters"]["cached"] is True
    np.testing.assert_array_equal(first.as_numpy("probabilities"), second.as_numpy("probabilities"))

    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    grpc_client = triton_grpc.InferenceServerClient(cached_server.grpc_address)
    answers = []
    for _ in range(2):
        pixel_tensor = triton_grpc.InferInput("pixels", list(pixels.shape), "UINT8")
        pixel_tensor.set_data_from_numpy(pixels)
        answers.append(grpc_client.infer("lite0", [pixel_tensor]))
    parameters = answers[1].get_response().parameters
    assert "cached" not in answers[0].get_response().parameters
    assert parameters["cached"].bool_param is True
    np.testing.assert_array_equal(answers[0].as_numpy("logits"), answers[1].as_numpy("logits"))


def test_a_new_version_is_never_answered_from_the_old_one(
    cached_server: LiveServer, cached_repository: Path, real_photos: dict[str, bytes]
) -> None:
    photo = real_photos["chelsea"]
    classify(cached_server, photo, variant="lite0")
    assert classify(cached_server, photo, variant="lite0").json()["cached"] is True
    staging = cached_repository / "lite0" / ".staging"
    shutil.copytree(cached_repository / "lite0" / "1", staging)
    staging.rename(cached_repository / "lite0" / "2")
    loaded = httpx.post(f"{cached_server.http_url}/v2/repository/models/lite0/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    swapped = classify(cached_server, photo, variant="lite0").json()
    assert swapped["version"] == 2 and swapped["cached"] is False
    assert classify(cached_server, photo, variant="lite0").json()["cached"] is True


def test_two_servers_share_one_redis(
    server_factory: ServerFactory,
    cached_repository: Path,
    redis_server: RedisProcess,
    real_photos: dict[str, bytes],
) -> None:
    env = {"EFFNET_CACHE_URL": redis_server.url}
    replicas = [server_factory(cached_repository, "--models", "lite0", env=env) for _ in range(2)]
    photo = real_photos["coffee"]
    first = classify(replicas[0], photo, variant="lite0", top_k=3)
    second = classify(replicas[1], photo, variant="lite0", top_k=3)
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert predictions(first.json()) == predictions(second.json())

    redis_server.kill()  # Redis gone: both still answer, the same thing, uncached
    for replica in replicas:
        answer = classify(replica, photo, variant="lite0", top_k=3)
        assert answer.status_code == 200 and answer.json()["cached"] is False
        assert predictions(answer.json()) == predictions(first.json())
    for replica in replicas:
        replica.stop()
    assert sum("event=cache_unavailable" in replica.log() for replica in replicas) == 2


QUEUE_SIZE = 4


def crops(photo: bytes, count: int) -> list[bytes]:
    """`count` distinct JPEGs cut from `photo` (each a new cache key)."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    out = []
    for index in range(count):
        buffer = io.BytesIO()
        image.crop((index * 8, 0, index * 8 + 200, 200)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_a_full_queue_answers_cached_photos_and_refuses_new_ones(
    server_factory: ServerFactory, cached_repository: Path, real_photos: dict[str, bytes]
) -> None:
    """The queue is filled deterministically: a batch waits for `max_batch_size` images (twice the queue's
    size, so never) or the queue delay (seconds), so the queued images stay put for that long."""
    server = server_factory(
        cached_repository, "--models", "lite0",
        "--max-batch-size", str(2 * QUEUE_SIZE), "--max-queue-size", str(QUEUE_SIZE),
        env={"EFFNET_MAX_QUEUE_DELAY_MS": "5000", "EFFNET_INSTANCES": "1"},
    )  # fmt: skip
    photo = real_photos["chelsea"]
    assert classify(server, photo, variant="lite0").json()["cached"] is False  # waits out the delay once
    fillers, new_photo = crops(real_photos["coffee"], QUEUE_SIZE), real_photos["coffee"]
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda body=body: answers.append(classify(server, body, variant="lite0")))
        for body in fillers
    ]
    for thread in threads:
        thread.start()

    def queued() -> int:
        model = httpx.get(f"{server.http_url}/v1/models/lite0", timeout=10).json()
        return int(model["batcher"]["queue_depth"])

    try:
        until_sync(lambda: queued() == QUEUE_SIZE, within_s=4, what="the queue full")
        hit = classify(server, photo, variant="lite0")
        miss = classify(server, new_photo, variant="lite0")
        assert queued() == QUEUE_SIZE  # still full: both were asked while it was
    finally:
        for thread in threads:
            thread.join(60)
    assert hit.status_code == 200 and hit.json()["cached"] is True, hit.text
    assert miss.status_code == 503, miss.text
    assert int(miss.headers["retry-after"]) >= 1
    assert [answer.status_code for answer in answers] == [200] * QUEUE_SIZE  # the queued ones ran after all
