"""One admission per request, the same on every protocol: `auto` and cascades in any case are routed (and
say so) over /classify, our gRPC, V2 HTTP and V2 gRPC; pixels to a cascade are refused; an unknown V2
model is refused before its body is read; metrics label the admitted name."""

from __future__ import annotations

import json
import socket

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["Auto", "AUTO"])
def test_auto_in_any_case_is_routed_over_all_four_protocols(
    family_server: LiveServer, real_photos: dict[str, bytes], name: str
) -> None:
    photo = real_photos["coffee"]
    http = httpx.post(
        f"{family_server.http_url}/classify",
        params={"variant": name, "budget_ms": 60_000},
        content=photo,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    ).json()
    assert http["route"]["policy"] == "auto" and http["route"]["budget_ms"] == 60_000
    with grpc.insecure_channel(family_server.grpc_address) as channel:
        ours = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model=name, images=[photo], budget_ms=60_000), timeout=60
        )
    assert ours.route.policy == "auto" and ours.route.budget_ms == 60_000
    routes = []
    for client_module, client in (
        (triton_http, triton_http.InferenceServerClient(f"127.0.0.1:{family_server.http_port}")),
        (triton_grpc, triton_grpc.InferenceServerClient(family_server.grpc_address)),
    ):
        image = client_module.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([photo], dtype=object))
        result = client.infer(name, [image], parameters={"budget_ms": 60_000})
        response = result.get_response()
        parameters = response["parameters"] if isinstance(response, dict) else response.parameters
        route = (
            parameters["route"] if isinstance(parameters["route"], str) else parameters["route"].string_param
        )
        routes.append(json.loads(route))
    assert all(r["policy"] == "auto" and r["budget_ms"] == 60_000 for r in routes), routes


def test_a_cascade_in_another_case_is_routed_and_refuses_pixels(
    family_server: LiveServer, real_photos: dict[str, bytes]
) -> None:
    photo = real_photos["chelsea"]
    answer = httpx.post(
        f"{family_server.http_url}/classify",
        params={"variant": "Cascade-Small"},
        content=photo,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    ).json()
    assert answer["model"] == "cascade-small" and answer["route"]["policy"] == "cascade"
    client = triton_grpc.InferenceServerClient(family_server.grpc_address)
    image = triton_grpc.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([photo], dtype=object))
    result = client.infer("CASCADE-SMALL", [image])
    assert json.loads(result.get_response().parameters["route"].string_param)["policy"] == "cascade"
    pixels = triton_grpc.InferInput("pixels", [1, 3, 224, 224], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.uint8))
    with pytest.raises(InferenceServerException, match="send encoded images") as refused:
        client.infer("Cascade-Small", [pixels])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    body = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 224, 224], "data": [0] * 150528}]
    }
    over_http = httpx.post(f"{family_server.http_url}/v2/models/cascade-SMALL/infer", json=body, timeout=30)
    assert over_http.status_code == 422 and "send encoded images" in over_http.json()["error"]


def test_budget_ms_for_a_model_is_refused_on_v2(
    family_server: LiveServer, real_photos: dict[str, bytes]
) -> None:
    client = triton_grpc.InferenceServerClient(family_server.grpc_address)
    image = triton_grpc.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([real_photos["chelsea"]], dtype=object))
    with pytest.raises(InferenceServerException, match="budget_ms applies to 'auto'"):
        client.infer("lite0", [image], parameters={"budget_ms": 50})


@pytest.mark.parametrize("path", ["/v2/models/no-such-model/infer", "/classify?variant=no-such-model"])
def test_an_unknown_model_is_refused_before_its_body_is_read(family_server: LiveServer, path: str) -> None:
    declared = 20 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", family_server.http_port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\0" * 4096)  # a sliver of the 20 MB: the rest never comes
        answer = ""
        while "no-such-model" not in answer:  # the head and the body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk.decode("latin-1")
    assert answer.startswith("HTTP/1.1 404"), answer[:200]
    assert "no-such-model" in answer


def test_metrics_label_the_admitted_name(family_server: LiveServer, real_photos: dict[str, bytes]) -> None:
    for name in ("AUTO", "Cascade-Small", "LITE0"):
        httpx.post(
            f"{family_server.http_url}/classify",
            params={"variant": name},
            content=real_photos["chelsea"],
            headers={"content-type": "image/jpeg"},
            timeout=60,
        ).raise_for_status()
    metrics = httpx.get(f"{family_server.http_url}/metrics", timeout=10).text
    for label in ("auto", "cascade-small"):
        assert f'effnet_requests_total{{code="200",model="{label}",protocol="http"}}' in metrics, label
    assert 'model="AUTO"' not in metrics and 'model="Cascade-Small"' not in metrics
    assert 'model="LITE0"' not in metrics
