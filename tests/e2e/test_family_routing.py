"""`variant=auto` and a cascade through the real server, over HTTP, our gRPC and V2, with real-weight
Lite models (lite0 fp32 / fp16 / int8, each declaring its ImageNet accuracy) and real photos."""

from __future__ import annotations

import json
import threading
from collections import Counter

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from tests.e2e.conftest import LiveServer, classify

pytestmark = pytest.mark.slow

CATS = range(281, 286)



def test_models_list_offers_auto_and_the_cascade(family_server: LiveServer) -> None:
    listing = httpx.get(f"{family_server.http_url}/v1/models", timeout=10).json()
    assert listing["policies"] == ["auto"]
    models = {m["name"]: m for m in listing["models"]}
    assert models["cascade-small"]["kind"] == "cascade" and models["cascade-small"]["ready"]
    assert [s["model"] for s in models["cascade-small"]["stages"]] == ["lite0-int8", "lite0"]
    assert models["cascade-small"]["description"] == "int8 first, fp32 for the unsure"
    assert models["lite0"]["description"] is None
    assert models["lite0"]["accuracy"]["imagenet_top1"] == 75.1
    assert models["lite0-int8"]["precision"] == "int8" and models["lite0-int8"]["agreement"]["images"] > 0


def test_auto_picks_a_bigger_model_with_a_larger_budget(family_server: LiveServer, real_photos) -> None:
    roomy = classify(family_server, real_photos["chelsea"], variant="auto", budget_ms=60_000).json()
    route = roomy["route"]
    assert route["policy"] == "auto" and route["fits"] and route["budget_ms"] == 60_000
    assert roomy["model"] == route["model"] in ("lite0", "lite0-fp16")  # 75.1 %, the most accurate
    assert roomy["results"][0]["predictions"][0]["class_id"] in CATS
    tight = classify(family_server, real_photos["chelsea"], variant="auto", budget_ms=0.01).json()
    assert tight["route"]["fits"] is False  # nothing fits: the fastest, and it says so
    metrics = httpx.get(f"{family_server.http_url}/metrics", timeout=10).text
    assert 'effnet_route_choices_total{fits="true",model="' in metrics


def test_auto_over_grpc_and_v2(family_server: LiveServer, real_photos) -> None:
    with grpc.insecure_channel(family_server.grpc_address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        answer = stub.Classify(
            classifier_pb2.ClassifyRequest(model="auto", images=[real_photos["coffee"]], budget_ms=60_000),
            timeout=60,
        )
    assert answer.route.policy == "auto" and answer.route.fits and answer.model == answer.route.model
    client = triton_grpc.InferenceServerClient(family_server.grpc_address)
    image = triton_grpc.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([real_photos["coffee"]], dtype=object))
    result = client.infer("auto", [image], parameters={"budget_ms": 60_000})
    route = json.loads(result.get_response().parameters["route"].string_param)
    assert route["policy"] == "auto" and result.get_response().model_name == route["model"]
    http = triton_http.InferenceServerClient(f"127.0.0.1:{family_server.http_port}")
    himage = triton_http.InferInput("image", [1], "BYTES")
    himage.set_data_from_numpy(np.array([real_photos["coffee"]], dtype=object))
    top = triton_http.InferRequestedOutput("probabilities", class_count=1)
    hresult = http.infer("auto", [himage], outputs=[top], parameters={"budget_ms": 60_000})
    assert int(hresult.as_numpy("probabilities")[0][0].decode().split(":")[1]) in (967, 968)  # espresso, cup
    assert json.loads(hresult.get_response()["parameters"]["route"])["policy"] == "auto"


def test_cascade_answers_with_its_route(family_server: LiveServer, real_photos) -> None:
    answer = classify(family_server, real_photos["chelsea"], variant="cascade-small", top_k=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "cascade-small"
    (image,) = body["route"]["images"]
    assert image["answered_by"] in ("lite0-int8", "lite0")
    assert image["stages"][0]["model"] == "lite0-int8"
    assert image["stages"][0]["escalated"] == (image["answered_by"] == "lite0")
    assert body["results"][0]["predictions"][0]["class_id"] in CATS
    metrics = httpx.get(f"{family_server.http_url}/metrics", timeout=10).text
    assert 'effnet_cascade_stage_images_total{cascade="cascade-small",stage="lite0-int8"} 1.0' in metrics
    # V2: a cascade takes encoded images only (its stages differ in resolution).
    meta = httpx.get(f"{family_server.http_url}/v2/models/cascade-small", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == ["image"]
    pixels = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 224, 224], "data": [0] * 150528}]
    }
    refused = httpx.post(f"{family_server.http_url}/v2/models/cascade-small/infer", json=pixels, timeout=30)
    assert refused.status_code == 422 and "send encoded images" in refused.json()["error"]


def test_auto_at_a_steady_rate_with_a_generous_budget_keeps_the_most_accurate(
    family_server: LiveServer, real_photos
) -> None:
    """Four clients, a budget every model meets: auto stays with the most accurate model (lite0; its
    fp16 graph declares the same accuracy) rather than drifting to lite0-int8."""
    chosen: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            for _ in range(40):
                answer = session.post(
                    f"{family_server.http_url}/classify",
                    params={"variant": "auto", "budget_ms": 5000},
                    content=real_photos["chelsea"],
                    headers={"content-type": "image/jpeg"},
                )
                chosen.append(answer.json()["model"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    best = sum(name in ("lite0", "lite0-fp16") for name in chosen) / len(chosen)
    print(f"auto at a steady rate: {Counter(chosen)}")
    assert best >= 0.95, Counter(chosen)
