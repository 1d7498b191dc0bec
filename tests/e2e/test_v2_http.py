"""The Open Inference Protocol over HTTP, driven by Triton's own client (tritonclient.http, sync and aio)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import parse_classification

pytestmark = pytest.mark.slow


def host(server) -> str:
    return server.http_url.removeprefix("http://")


def image_input(images: list[bytes], binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def classify_http(server, image: bytes, top_k: int) -> list[dict]:
    response = httpx.post(
        f"{server.http_url}/classify",
        params={"variant": "lite0", "top_k": top_k},
        content=image,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["predictions"]


def test_health_and_metadata(live_server) -> None:
    client = triton_http.InferenceServerClient(host(live_server))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lite0") and client.is_model_ready("b0", "1")
    assert not client.is_model_ready("b0", "9") and not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "effnet-serve" and "classification" in server["extensions"]
    meta = client.get_model_metadata("lite0")
    assert meta["versions"] == ["1"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("pixels", "UINT8", (-1, 3, 224, 224)),
        ("image", "BYTES", (-1, 1)),
    }
    names = [t["name"] for t in meta["outputs"]]
    assert names == ["logits", "probabilities", "features", "cam", "cam_classes"]
    assert meta["outputs"][4]["datatype"] == "INT64" and meta["outputs"][3]["shape"] == [-1, -1, 7, 7]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_readiness_answers_its_own_document_for_false_and_documents_it(live_server) -> None:
    """A version that is no number is not ready: 400 with the readiness document, which the OpenAPI
    document declares for 400 (schemathesis found it declared as an error body)."""
    response = httpx.get(f"{live_server.http_url}/v2/models/lite0/versions/lite0/ready", timeout=10)
    assert response.status_code == 400 and response.json() == {"name": "lite0", "ready": False}
    unknown = httpx.get(f"{live_server.http_url}/v2/models/nope/ready", timeout=10)
    assert unknown.status_code == 404 and "error" in unknown.json()
    paths = httpx.get(f"{live_server.http_url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready"):
        schema = paths[path]["get"]["responses"]["400"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["name", "ready"]
    server_ready = paths["/v2/health/ready"]["get"]["responses"]["400"]["content"]["application/json"]
    assert server_ready["schema"]["required"] == ["ready"]


@pytest.mark.parametrize("binary_outputs", [True, False], ids=["binary-out", "json-out"])
def test_image_bytes_with_classification_equal_classify(live_server, real_photos, binary_outputs) -> None:
    client = triton_http.InferenceServerClient(host(live_server))
    photos = [real_photos["chelsea"], real_photos["coffee"]]
    outputs = [
        triton_http.InferRequestedOutput("probabilities", binary_data=binary_outputs, class_count=3),
        triton_http.InferRequestedOutput("logits", binary_data=binary_outputs),
    ]
    result = client.infer("lite0", [image_input(photos)], outputs=outputs, request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 3)
    logits = result.as_numpy("logits")
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    for row, photo in zip(classes, photos, strict=True):
        expected = classify_http(live_server, photo, 3)
        got = [parse_classification(item) for item in row]
        assert [(i, label) for _, i, label in got] == [(p["class_id"], p["label"]) for p in expected]
        assert [s for s, _, _ in got] == pytest.approx([p["score"] for p in expected], abs=1e-5)


def test_json_request_with_base64_images(live_server, real_photos) -> None:
    """JSON cannot carry JPEG bytes as text: BYTES elements may be {"b64": ...} objects."""
    photos = [real_photos["chelsea"], real_photos["coffee"]]
    body = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [len(photos)],
             "data": [{"b64": base64.b64encode(p).decode()} for p in photos]}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }  # fmt: skip
    response = httpx.post(f"{live_server.http_url}/v2/models/lite0/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs[0]["datatype"] == "BYTES" and outputs[0]["shape"] == [2, 1]
    top = [parse_classification(item)[1] for item in outputs[0]["data"]]
    assert top == [classify_http(live_server, p, 1)[0]["class_id"] for p in photos]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixels_input(live_server, binary) -> None:
    client = triton_http.InferenceServerClient(host(live_server))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    tensor = triton_http.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    result = client.infer("b0", [tensor], model_version="1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_errors_use_the_v2_format(live_server) -> None:
    response = httpx.post(
        f"{live_server.http_url}/v2/models/lite0/infer",
        json={"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 2, 2], "data": [0] * 12}]},
        timeout=10,
    )
    assert response.status_code == 422 and "shape [N, 3, 224, 224]" in response.json()["error"]
    response = httpx.post(f"{live_server.http_url}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert response.status_code == 404 and set(response.json()) == {"error"}
    response = httpx.post(f"{live_server.http_url}/v2/models/lite0/infer", content=b"{", timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    client = triton_http.InferenceServerClient(host(live_server))
    with pytest.raises(InferenceServerException, match="not a decodable|image"):
        client.infer("lite0", [image_input([b"not an image"])])


async def test_aio_client(live_server, real_photos) -> None:
    client = triton_http_aio.InferenceServerClient(host(live_server))
    try:
        assert await client.is_server_ready() and await client.is_model_ready("lite0")
        tensor = image_input([real_photos["coffee"]])
        output = triton_http_aio.InferRequestedOutput("probabilities", class_count=2)
        result = await client.infer("lite0", [tensor], outputs=[output])
        assert parse_classification(result.as_numpy("probabilities")[0][0])[1] == 967
    finally:
        await client.close()
