"""The HTTP API against the real server, real exported models and real photos."""

from __future__ import annotations

import asyncio
import io
import os
import re
import time

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import classify
from tests.robustness.corpus import png_claiming

pytestmark = pytest.mark.slow

TIGER_CAT_FAMILY = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_FAMILY = {967, 968}  # espresso, cup



def test_lite0_names_the_cat_and_the_coffee(live_server, real_photos) -> None:
    cat = classify(live_server, real_photos["chelsea"], variant="lite0", top_k=3)
    assert cat.status_code == 200, cat.text
    body = cat.json()
    assert body["model"] == "lite0" and body["weights"] == "imagenet"
    predictions = body["results"][0]["predictions"]
    assert len(predictions) == 3
    assert predictions[0]["class_id"] in TIGER_CAT_FAMILY
    assert predictions[0]["label"] in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert set(body["timings"]) == {"preprocess_ms", "queue_ms", "inference_ms", "total_ms"}

    coffee = classify(live_server, real_photos["coffee"], variant="lite0", top_k=1)
    assert coffee.json()["results"][0]["predictions"][0]["class_id"] in ESPRESSO_FAMILY


def test_curl_style_form_urlencoded_body_is_taken_as_the_image(live_server, real_photos) -> None:
    response = httpx.post(
        f"{live_server.http_url}/classify?variant=lite0",
        content=real_photos["chelsea"],
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["predictions"][0]["class_id"] in TIGER_CAT_FAMILY


def test_default_model_is_the_real_weight_model(live_server, real_photos) -> None:
    response = classify(live_server, real_photos["chelsea"])
    assert response.status_code == 200
    assert response.json()["model"] == "lite0"  # b0 has random weights here


def test_multipart_batch_answers_in_request_order(live_server, real_photos) -> None:
    files = [
        ("files", ("coffee.jpg", real_photos["coffee"], "image/jpeg")),
        ("files", ("cat.jpg", real_photos["chelsea"], "image/jpeg")),
        ("files", ("coffee2.jpg", real_photos["coffee"], "image/jpeg")),
    ]
    response = httpx.post(
        f"{live_server.http_url}/classify", params={"variant": "lite0", "top_k": 1}, files=files, timeout=60
    )
    assert response.status_code == 200, response.text
    top = [r["predictions"][0]["class_id"] for r in response.json()["results"]]
    assert top[0] in ESPRESSO_FAMILY and top[1] in TIGER_CAT_FAMILY and top[2] in ESPRESSO_FAMILY


def test_random_weight_model_is_labelled_random(live_server, real_photos) -> None:
    response = classify(live_server, real_photos["chelsea"], variant="b0", top_k=5)
    assert response.status_code == 200
    assert response.json()["weights"] == "random"
    assert len(response.json()["results"][0]["predictions"]) == 5


def test_png_with_alpha_is_accepted(live_server) -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 200), (10, 200, 30, 128)).save(buffer, format="PNG")
    response = httpx.post(
        f"{live_server.http_url}/classify?variant=b0",
        content=buffer.getvalue(),
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("params", "body", "content_type", "status", "code"),
    [
        ({"variant": "b9"}, b"x", "image/jpeg", 404, "unknown_model"),
        ({"variant": "lite0"}, b"", "image/jpeg", 400, "empty_body"),
        ({"variant": "lite0"}, b"not an image at all", "image/jpeg", 400, "bad_image"),
        ({"variant": "lite0"}, b"{}", "application/json", 415, "unsupported_media_type"),
        ({"variant": "lite0", "top_k": 0}, b"x", "image/jpeg", 422, "invalid_argument"),
        ({"variant": "lite0", "top_k": 5000}, b"x", "image/jpeg", 422, "invalid_argument"),
        ({"variant": "lite0", "top_k": "many"}, b"x", "image/jpeg", 422, "invalid_argument"),
    ],
)
def test_bad_requests_get_clear_errors(live_server, params, body, content_type, status, code) -> None:
    response = httpx.post(
        f"{live_server.http_url}/classify",
        params=params,
        content=body,
        headers={"content-type": content_type},
        timeout=30,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_unknown_variant_lists_the_valid_ones(live_server) -> None:
    response = classify(live_server, b"x", variant="b9")
    assert "b0" in response.json()["error"]["message"] and "lite0" in response.json()["error"]["message"]


def test_truncated_jpeg_is_a_400(live_server, real_photos) -> None:
    data = real_photos["chelsea"]
    response = classify(live_server, data[: len(data) // 2], variant="lite0")
    assert response.status_code == 400



def test_decompression_bomb_is_refused_without_decoding(live_server) -> None:
    response = classify(live_server, png_claiming(30_000, 30_000), variant="lite0")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "30000" in response.json()["error"]["message"]


def test_body_above_the_limit_is_413(server_factory, model_repository) -> None:
    server = server_factory(model_repository, "--models", "lite0", env={"EFFNET_MAX_BODY_BYTES": "4096"})
    try:
        response = classify(server, b"\xff" * 10_000, variant="lite0")
        assert response.status_code == 413
        assert "4096" in response.json()["error"]["message"]
    finally:
        assert server.stop() == 0


def test_models_endpoint_describes_each_model(live_server) -> None:
    body = httpx.get(f"{live_server.http_url}/v1/models", timeout=10).json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"b0", "lite0"}
    assert body["default_model"] == "lite0"
    b0, lite0 = models["b0"], models["lite0"]
    assert b0["resolution"] == 224 and b0["resize_size"] == 256 and b0["interpolation"] == "bicubic"
    assert b0["weights"]["kind"] == "random" and lite0["weights"]["kind"] == "imagenet"
    assert b0["provider"] == "CPUExecutionProvider" and b0["ready"] is True
    assert b0["batcher"]["max_batch_size"] >= 1 and b0["parameters"] > 5_000_000
    if b0["batcher"]["instances"] > 1 and (os.cpu_count() or 1) > 1:  # a one-thread session for overlaps
        assert b0["batcher"]["overlap_run_size"] in (1, 2, b0["batcher"]["max_batch_size"])
    assert b0["inputs"][0]["name"] == "pixels" and b0["inputs"][0]["dtype"] == "uint8"


def test_health_and_readiness(live_server) -> None:
    assert httpx.get(f"{live_server.http_url}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{live_server.http_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["models"] == {"b0": "ready", "lite0": "ready"}


def test_readyz_is_503_with_the_reason_when_a_model_is_missing(server_factory, model_repository) -> None:
    server = server_factory(model_repository, "--models", "lite0,b3", wait=False)
    try:
        response = _wait_for_model(server, "lite0")
        assert response.status_code == 503
        assert "not found" in response.json()["models"]["b3"]
        # the healthy model still serves
        assert httpx.get(f"{server.http_url}/v1/models/lite0", timeout=5).json()["ready"] is True
    finally:
        assert server.stop() == 0


def _wait_for_model(server, name: str, timeout: float = 120.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{server.http_url}/readyz", timeout=5)
            if response.json()["models"].get(name) == "ready":
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} not ready after {timeout}s:\n{server.log()[-3000:]}")


def test_metrics_show_the_documented_set_and_batches_form(live_server, real_photos) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            requests = [
                client.post(
                    f"{live_server.http_url}/classify?variant=b0",
                    content=real_photos["chelsea"],
                    headers={"content-type": "image/jpeg"},
                )
                for _ in range(48)
            ]
            return [r.status_code for r in await asyncio.gather(*requests)]

    assert set(asyncio.run(burst())) == {200}
    text = httpx.get(f"{live_server.http_url}/metrics", timeout=10).text
    for name in (
        "effnet_requests_total",
        "effnet_request_duration_seconds_bucket",
        "effnet_preprocess_duration_seconds_bucket",
        "effnet_queue_duration_seconds_bucket",
        "effnet_inference_duration_seconds_bucket",
        "effnet_batch_size_bucket",
        "effnet_queue_depth",
        "effnet_model_ready",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    assert re.search(r'effnet_requests_total\{code="200",model="b0",protocol="http"\} \d+', text)
    # batches bigger than one formed under concurrent load: fewer batches than images
    count = float(re.search(r'effnet_batch_size_count\{model="b0"\} (\S+)', text).group(1))
    total = float(re.search(r'effnet_batch_size_sum\{model="b0"\} (\S+)', text).group(1))
    assert total > count, "every batch had a single image"
    assert 'effnet_model_ready{model="lite0"} 1.0' in text


def test_request_id_is_echoed(live_server) -> None:
    response = httpx.get(f"{live_server.http_url}/healthz", headers={"x-request-id": "abc123"}, timeout=10)
    assert response.headers["x-request-id"] == "abc123"


def test_openapi_document_lists_the_api(live_server) -> None:
    paths = httpx.get(f"{live_server.http_url}/openapi.json", timeout=10).json()["paths"]
    assert {"/classify", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(paths)
