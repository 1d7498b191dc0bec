"""Triton's protocol extensions driven by Triton's own client (tritonclient 2.73, HTTP and gRPC) against a
real server on tiny real models: model configuration, statistics and system shared memory."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import LiveServer, ServerFactory
from tests.tiny_model import CLASSES, SIZE, write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_server(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """`tiny` (config.json: batch 8, 2 ms delay, cached answers, its two newest versions), `tiny2` (with
    the explain outputs), both declaring an accuracy (so `auto` may choose them), and the cascade `pair`."""
    repository = tmp_path_factory.mktemp("triton-extensions")
    write_model(repository, "tiny", accuracy=0.7)
    write_model(repository, "tiny2", accuracy=0.6, explain=True)
    config = {
        "max_batch_size": 8,
        "max_queue_delay_ms": 2,
        "response_cache": True,
        "version_policy": {"latest": 2},
    }
    (repository / "tiny" / "config.json").write_text(json.dumps(config))
    (repository / "pair").mkdir()
    stages = [{"model": "tiny2", "exit_confidence": 0.5}, {"model": "tiny"}]
    (repository / "pair" / "cascade.json").write_text(json.dumps({"stages": stages}))
    return server_factory(repository)


def _http(server: LiveServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")


def _grpc(server: LiveServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc_address)


# ------------------------------------------------------------------------------ model configuration
def test_model_config_has_tritons_shape_over_http_and_grpc(tiny_server: LiveServer) -> None:
    over_http = _http(tiny_server).get_model_config("tiny")
    over_grpc = _grpc(tiny_server).get_model_config("tiny", as_json=True)["config"]
    for config in (over_http, over_grpc):
        assert config["name"] == "tiny" and config["platform"] == "onnxruntime_onnx"
        assert int(config["max_batch_size"]) == 8
        pixels, image = config["input"]
        assert (pixels["name"], pixels["data_type"]) == ("pixels", "TYPE_UINT8")
        assert pixels["format"] == "FORMAT_NCHW"
        assert [int(d) for d in pixels["dims"]] == [3, SIZE, SIZE]  # no batch axis
        assert (image["name"], image["data_type"]) == ("image", "TYPE_STRING")
        assert pixels["optional"] and image["optional"]
        assert [(o["name"], o["data_type"], [int(d) for d in o["dims"]]) for o in config["output"]] == [
            ("logits", "TYPE_FP32", [CLASSES]),
            ("probabilities", "TYPE_FP32", [CLASSES]),
        ]
        batching = config["dynamic_batching"]
        assert [int(s) for s in batching["preferred_batch_size"]] == [8]
        assert int(batching["max_queue_delay_microseconds"]) == 2000
        assert int(config["version_policy"]["latest"]["num_versions"]) == 2
        (group,) = config["instance_group"]
        assert group["kind"] == "KIND_CPU" and int(group["count"]) >= 1
        assert config["response_cache"]["enable"] is True
        assert config["parameters"]["crop_size"]["string_value"] == str(SIZE)
    # HTTP's numbers stay JSON numbers (perf_analyzer reads them as such).
    assert over_http["max_batch_size"] == 8 and over_http["input"][0]["dims"] == [3, SIZE, SIZE]


def test_model_config_of_a_version_a_cascade_and_auto(tiny_server: LiveServer) -> None:
    client = _http(tiny_server)
    assert client.get_model_config("tiny2", "1")["name"] == "tiny2"
    assert [o["name"] for o in client.get_model_config("tiny2")["output"]][2:] == [
        "features",
        "cam",
        "cam_classes",
    ]
    cascade = _grpc(tiny_server).get_model_config("pair", as_json=True)["config"]
    assert cascade["platform"] == "ensemble"
    assert [s["model_name"] for s in cascade["ensemble_scheduling"]["step"]] == ["tiny2", "tiny"]
    assert cascade["parameters"]["exit_confidence.tiny2"]["string_value"] == "0.5"
    assert [i["name"] for i in cascade["input"]] == ["image"]
    auto = client.get_model_config("auto")
    assert auto["platform"] == "auto"
    assert auto["parameters"]["candidates"]["string_value"] == "tiny,tiny2"


def test_model_config_refusals(tiny_server: LiveServer) -> None:
    response = httpx.get(f"{tiny_server.http_url}/v2/models/nope/config")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        _grpc(tiny_server).get_model_config("tiny", "7")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "version 7" in caught.value.message()


# ------------------------------------------------------------------------------------------ statistics
def _pixels_input(client_module, count: int):  # type: ignore[no-untyped-def]
    tensor = client_module.InferInput("pixels", [count, 3, SIZE, SIZE], "UINT8")
    tensor.set_data_from_numpy(np.full((count, 3, SIZE, SIZE), 7, dtype=np.uint8))
    return tensor


def test_statistics_count_what_ran_in_tritons_shape(tiny_server: LiveServer) -> None:
    http, grpc = _http(tiny_server), _grpc(tiny_server)
    before = http.get_inference_statistics("tiny2")["model_stats"][0]
    for _ in range(3):
        http.infer("tiny2", [_pixels_input(triton_http, 1)])
    grpc.infer("tiny2", [_pixels_input(triton_grpc, 2)])
    with pytest.raises(InferenceServerException):  # admitted, then refused: a failure of the model
        http.infer(
            "tiny2", [_pixels_input(triton_http, 1)], outputs=[triton_http.InferRequestedOutput("nope")]
        )

    over_http = http.get_inference_statistics("tiny2")["model_stats"]
    over_grpc = grpc.get_inference_statistics("tiny2", as_json=True)["model_stats"]
    for (after,) in (over_http, over_grpc):
        assert (after["name"], after["version"]) == ("tiny2", "1")
        assert int(after["inference_count"]) - before["inference_count"] == 5
        runs = int(after["execution_count"]) - before["execution_count"]
        assert 2 <= runs <= 5  # the gRPC request's two images run in one batch or two
        stats, earlier = after["inference_stats"], before["inference_stats"]
        assert int(stats["success"]["count"]) - earlier["success"]["count"] == 4
        assert int(stats["fail"]["count"]) - earlier["fail"]["count"] == 1
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert int(stats[key]["count"]) - earlier[key]["count"] == 5, key
        assert int(stats["compute_infer"]["ns"]) > int(earlier["compute_infer"]["ns"])
        assert int(after["last_inference"]) > 0
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
        assert sum(size * count for size, count in sizes.items()) == int(after["inference_count"])


def test_statistics_of_every_model_and_refusals(tiny_server: LiveServer) -> None:
    every = httpx.get(f"{tiny_server.http_url}/v2/models/stats").json()["model_stats"]
    assert {row["name"] for row in every} == {"tiny", "tiny2", "pair"}
    assert _grpc(tiny_server).get_inference_statistics(as_json=True)["model_stats"]
    versioned = httpx.get(f"{tiny_server.http_url}/v2/models/tiny/versions/1/stats").json()
    assert versioned["model_stats"][0]["version"] == "1"
    response = httpx.get(f"{tiny_server.http_url}/v2/models/nope/stats")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        _grpc(tiny_server).get_inference_statistics("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
