"""Features and class activation maps over every protocol, against the real server: our HTTP
(/embed, /classify?explain=true, /explain), our gRPC (Embed, Classify.explain), V2 over HTTP and gRPC
(outputs `features`, `cam`, `cam_classes` by name, JSON and binary). Same numbers everywhere; the
model that answered is named; a model exported before these outputs existed keeps serving and says
what it offers."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

from models.heads import strip_file
from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec
from tests.e2e.conftest import LiveServer, ServerFactory

pytestmark = pytest.mark.slow
CAT = range(281, 286)


@pytest.fixture(scope="module")
def explain_server(
    server_factory: ServerFactory,
    model_repository: Path,
    precision_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> LiveServer:
    """lite0 and lite0-int8 (with the outputs), `old` (lite0 as exported before them: stripped graph,
    two outputs in its model.json) and `cascade-small` (lite0-int8, then lite0)."""
    repository = tmp_path_factory.mktemp("explain")
    shutil.copytree(model_repository / "lite0", repository / "lite0")
    shutil.copytree(precision_repository / "lite0-int8", repository / "lite0-int8")
    old = repository / "old" / "1"
    shutil.copytree(model_repository / "lite0" / "1", old)
    strip_file(old / MODEL_FILE, old / MODEL_FILE)
    spec = ModelSpec.from_file(old / SPEC_FILE)
    import hashlib

    digest = hashlib.sha256((old / MODEL_FILE).read_bytes()).hexdigest()
    old_spec = spec.model_copy(update={"name": "old", "outputs": spec.outputs[:2], "onnx_sha256": digest})
    (old / SPEC_FILE).write_text(old_spec.to_json())
    (repository / "cascade-small").mkdir()
    cascade = {"stages": [{"model": "lite0-int8", "exit_confidence": 0.45}, {"model": "lite0"}]}
    (repository / "cascade-small" / "cascade.json").write_text(json.dumps(cascade))
    return server_factory(repository)


def _post(server: LiveServer, path: str, body: bytes, accept: str = "application/json", **params: object):
    return httpx.post(
        f"{server.http_url}{path}",
        params=params,
        content=body,
        headers={"content-type": "image/jpeg", "accept": accept},
        timeout=120,
    )


def _grpc(server: LiveServer, method: str, request):  # type: ignore[no-untyped-def]
    async def call():  # type: ignore[no-untyped-def]
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            return await getattr(pb_grpc.ClassifierStub(channel), method)(request, timeout=120)

    return asyncio.run(call())


def test_embeddings_are_the_same_numbers_on_every_protocol(explain_server, real_photos) -> None:
    photo = real_photos["chelsea"]
    answer = _post(explain_server, "/embed", photo, variant="lite0")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "lite0" and body["dimension"] == 1280 and not body["normalized"]
    reference = np.array(body["results"][0]["vector"], dtype=np.float32)
    assert reference.shape == (1280,) and np.abs(reference).max() > 0

    binary = _post(explain_server, "/embed", photo, accept="application/octet-stream", variant="lite0")
    assert binary.headers["content-type"] == "application/octet-stream"
    assert binary.headers["x-embedding-shape"] == "1,1280" and binary.headers["x-model"] == "lite0"
    np.testing.assert_array_equal(np.frombuffer(binary.content, dtype="<f4"), reference)

    unit = _post(explain_server, "/embed", photo, variant="lite0", normalize="true").json()
    np.testing.assert_allclose(unit["results"][0]["vector"], reference / np.linalg.norm(reference), rtol=1e-6)

    message = _grpc(explain_server, "Embed", pb.EmbedRequest(model="lite0", images=[photo], id="e1"))
    assert message.id == "e1" and message.model == "lite0" and message.dimension == 1280
    np.testing.assert_array_equal(np.array(message.embeddings[0].vector, dtype=np.float32), reference)

    for binary_output in (True, False):
        client = triton_http.InferenceServerClient(explain_server.http_url.removeprefix("http://"))
        tensor = triton_http.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_), binary_data=True)
        result = client.infer(
            "lite0",
            [tensor],
            outputs=[triton_http.InferRequestedOutput("features", binary_data=binary_output)],
        )
        np.testing.assert_array_equal(result.as_numpy("features")[0], reference)
    client = triton_grpc.InferenceServerClient(explain_server.grpc_address)
    tensor = triton_grpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
    result = client.infer("lite0", [tensor], outputs=[triton_grpc.InferRequestedOutput("features")])
    np.testing.assert_array_equal(result.as_numpy("features")[0], reference)


def test_maps_are_the_same_numbers_on_every_protocol(explain_server, real_photos) -> None:
    photo = real_photos["chelsea"]
    answer = _post(explain_server, "/classify", photo, variant="lite0", top_k=3, explain="true")
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["results"][0]["predictions"]
    assert predictions[0]["class_id"] in CAT
    grids = np.array([p["cam"] for p in predictions], dtype=np.float32)
    assert grids.shape == (3, 7, 7)
    plain = _post(explain_server, "/classify", photo, variant="lite0", top_k=3).json()
    assert "cam" not in plain["results"][0]["predictions"][0]

    message = _grpc(
        explain_server, "Classify", pb.ClassifyRequest(model="lite0", images=[photo], top_k=3, explain=True)
    )
    for prediction, grid in zip(message.results[0].predictions, grids, strict=True):
        assert (prediction.cam.height, prediction.cam.width) == (7, 7)
        np.testing.assert_allclose(np.array(prediction.cam.values).reshape(7, 7), grid, atol=1e-4)

    client = triton_http.InferenceServerClient(explain_server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_), binary_data=True)
    cam = triton_http.InferRequestedOutput("cam", binary_data=True)
    result = client.infer("lite0", [tensor], outputs=[cam, triton_http.InferRequestedOutput("cam_classes")])
    classes = result.as_numpy("cam_classes")
    maps = result.as_numpy("cam")
    assert classes.dtype == np.int64 and int(classes[0, 0]) == predictions[0]["class_id"]
    np.testing.assert_allclose(maps[0, 0], grids[0], atol=1e-4)


@pytest.mark.parametrize(("parameters", "classes"), [({"class_id": 967}, [967]), ({"k": 3}, None)])
def test_v2_maps_over_json(explain_server, real_photos, parameters, classes) -> None:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [{"b64": __import__("base64").b64encode(real_photos["chelsea"]).decode()}],
            }
        ],
        "outputs": [{"name": "cam", "parameters": parameters}, {"name": "cam_classes"}],
    }
    answer = httpx.post(f"{explain_server.http_url}/v2/models/lite0/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    count = 1 if classes else 3
    assert outputs["cam"]["shape"] == [1, count, 7, 7] and outputs["cam"]["datatype"] == "FP32"
    assert outputs["cam_classes"]["datatype"] == "INT64" and len(outputs["cam_classes"]["data"]) == count
    if classes:
        assert outputs["cam_classes"]["data"] == classes


def test_explain_png_is_the_photo_with_the_map(explain_server, real_photos) -> None:
    answer = _post(explain_server, "/explain", real_photos["chelsea"], variant="lite0")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert int(answer.headers["x-class-id"]) in CAT and answer.headers["x-model"] == "lite0"
    image = Image.open(io.BytesIO(answer.content))
    photo = Image.open(io.BytesIO(real_photos["chelsea"]))
    assert image.size == photo.size
    assert np.abs(np.asarray(image, np.float32) - np.asarray(photo.convert("RGB"), np.float32)).mean() > 5
    chosen = _post(explain_server, "/explain", real_photos["chelsea"], variant="lite0", class_id=967)
    assert chosen.status_code == 200 and chosen.headers["x-class-id"] == "967"
    assert chosen.content != answer.content


def test_cascades_and_auto_say_which_model_answered(explain_server, real_photos) -> None:
    photos = [("files", (f"{n}.jpg", real_photos[n], "image/jpeg")) for n in ("chelsea", "coffee")]
    answer = httpx.post(
        f"{explain_server.http_url}/embed", params={"variant": "cascade-small"}, files=photos, timeout=120
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "cascade-small" and len(body["results"]) == 2
    answered = [image["answered_by"] for image in body["route"]["images"]]
    assert set(answered) <= {"lite0", "lite0-int8"}
    for name, result, model in zip(("chelsea", "coffee"), body["results"], answered, strict=True):
        direct = _post(explain_server, "/embed", real_photos[name], variant=model).json()["results"][0]
        np.testing.assert_allclose(result["vector"], direct["vector"], rtol=1e-5, atol=1e-5)
    # auto chooses among the models that offer the outputs (never `old`), and says which it chose.
    for _ in range(3):
        chosen = _post(explain_server, "/embed", real_photos["chelsea"], variant="auto", budget_ms=10_000)
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["model"] in {"lite0", "lite0-int8"}
        assert chosen.json()["route"]["model"] == chosen.json()["model"]


def test_outputs_a_model_lacks_are_a_clear_4xx(explain_server, real_photos) -> None:
    photo = real_photos["chelsea"]
    old = _post(explain_server, "/embed", photo, variant="old")
    assert old.status_code == 422  # invalid_argument, as for any parameter a model cannot take
    message = old.json()["error"]["message"]
    assert "no output features" in message and "offers logits, probabilities" in message
    assert _post(explain_server, "/classify", photo, variant="old", explain="true").status_code == 422
    assert _post(explain_server, "/classify", photo, variant="old").status_code == 200  # still serves
    bad_class = _post(explain_server, "/explain", photo, variant="lite0", class_id=1000)
    assert bad_class.status_code == 422 and "between 0 and 999" in bad_class.text

    with pytest.raises(grpc.RpcError) as caught:
        _grpc(explain_server, "Embed", pb.EmbedRequest(model="old", images=[photo]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offers logits, probabilities" in (caught.value.details() or "")

    client = triton_http.InferenceServerClient(explain_server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="has logits, probabilities"):
        client.infer("old", [tensor], outputs=[triton_http.InferRequestedOutput("features")])
    meta = client.get_model_metadata("old")
    assert [t["name"] for t in meta["outputs"]] == ["logits", "probabilities"]
    listing = httpx.get(f"{explain_server.http_url}/v1/models", timeout=30).json()
    outputs = {m["name"]: [o["name"] for o in m["outputs"]] for m in listing["models"]}
    assert outputs["old"] == ["logits", "probabilities"]
    assert outputs["lite0-int8"] == ["logits", "probabilities", "features", "cam", "cam_classes"]


def test_embed_and_explain_take_a_priority_as_classify_does(explain_server, real_photos) -> None:
    photo = real_photos["chelsea"]
    for path in ("/embed", "/explain"):
        high = _post(explain_server, path, photo, variant="lite0", priority="high")
        assert high.status_code == 200, high.text
        bad = _post(explain_server, path, photo, variant="lite0", priority="urgent")
        assert bad.status_code == 422, bad.text
        assert "high, normal, low" in bad.json()["error"]["message"]
        by_header = httpx.post(
            f"{explain_server.http_url}{path}",
            params={"variant": "lite0"},
            content=photo,
            headers={"content-type": "image/jpeg", "x-priority": "low"},
            timeout=120,
        )
        assert by_header.status_code == 200, by_header.text
    high = _grpc(
        explain_server, "Embed", pb.EmbedRequest(model="lite0", images=[photo], priority="high")
    )
    assert high.dimension > 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _grpc(explain_server, "Embed", pb.EmbedRequest(model="lite0", images=[photo], priority="urgent"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "high, normal, low" in (caught.value.details() or "")
    schema = httpx.get(f"{explain_server.http_url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/classify", "/embed", "/explain"):
        names = {p["name"].lower() for p in schema[path]["post"]["parameters"]}
        assert {"priority", "x-priority"} <= names, (path, names)
