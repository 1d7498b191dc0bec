"""Triton's protocol extensions driven by Triton's own client (tritonclient 2.73, HTTP and gRPC) against a
real server on tiny real models: model configuration, statistics and system shared memory."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as triton_shm
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import LiveServer, ServerFactory
from tests.tiny_model import CLASSES, SIZE, write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_server(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """`tiny` (config.json: batch 8, 2 ms delay, cached answers, its two newest versions), `tiny2` (with
    the explain outputs), both declaring an accuracy (so `auto` may choose them), the cascade `pair`, and
    `pix`, which takes `pixels` only (config.json's v2_inputs)."""
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
    write_model(repository, "pix")
    (repository / "pix" / "config.json").write_text(json.dumps({"v2_inputs": ["pixels"]}))
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


def test_a_model_may_take_one_input_only(tiny_server: LiveServer, real_photos: dict[str, bytes]) -> None:
    client = _http(tiny_server)
    (pixels,) = client.get_model_config("pix")["input"]
    assert pixels["name"] == "pixels" and not pixels.get("optional", False)
    assert [i["name"] for i in client.get_model_metadata("pix")["inputs"]] == ["pixels"]
    image = triton_http.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[real_photos["coffee"]]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("pix", [image])
    assert caught.value.status() == "422" and "takes only pixels" in caught.value.message()
    assert client.infer("tiny", [image]).as_numpy("probabilities").shape == (1, CLASSES)


def test_model_config_refusals(tiny_server: LiveServer) -> None:
    response = httpx.get(f"{tiny_server.http_url}/v2/models/nope/config")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    response = httpx.get(f"{tiny_server.http_url}/v2/models/auto/versions/1/config")
    assert response.status_code == 422 and "no versions" in response.json()["error"]
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
    assert {row["name"] for row in every} == {"tiny", "tiny2", "pair", "pix"}
    assert _grpc(tiny_server).get_inference_statistics(as_json=True)["model_stats"]
    versioned = httpx.get(f"{tiny_server.http_url}/v2/models/tiny/versions/1/stats").json()
    assert versioned["model_stats"][0]["version"] == "1"
    response = httpx.get(f"{tiny_server.http_url}/v2/models/nope/stats")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        _grpc(tiny_server).get_inference_statistics("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


# -------------------------------------------------------------------------------- system shared memory
@pytest.fixture
def regions() -> Iterator[Callable[[str, int], Any]]:
    """Create POSIX shared memory objects with tritonclient.utils.shared_memory; destroyed after."""
    made: list[Any] = []

    def create(key: str, size: int) -> Any:
        handle = triton_shm.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return handle

    yield create
    for handle in made:
        triton_shm.destroy_shared_memory_region(handle)


def _mapped(server: LiveServer, key: str) -> bool:
    return f"/dev/shm/{key.strip('/')}" in Path(f"/proc/{server.process.pid}/maps").read_text()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_in_system_shared_memory(
    tiny_server: LiveServer, regions: Callable[[str, int], Any], protocol: str
) -> None:
    module: Any = triton_http if protocol == "http" else triton_grpc
    client = _http(tiny_server) if protocol == "http" else _grpc(tiny_server)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    in_key, out_key = f"/t38-{protocol}-in", f"/t38-{protocol}-out"
    input_handle, output_handle = regions(in_key, 16 + pixels.nbytes), regions(out_key, 256)
    triton_shm.set_shared_memory_region(input_handle, [pixels], offset=16)
    client.register_system_shared_memory("in", in_key, pixels.nbytes, offset=16)
    client.register_system_shared_memory("out", out_key, 256)
    assert _mapped(tiny_server, in_key)
    status = client.get_system_shared_memory_status(**({"as_json": True} if protocol == "grpc" else {}))
    rows = status if protocol == "http" else list(status["regions"].values())
    assert {(r["name"], r["key"], int(r["byte_size"])) for r in rows} == {
        ("in", in_key, pixels.nbytes),
        ("out", out_key, 256),
    }
    try:
        tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_shared_memory("in", pixels.nbytes)
        output = module.InferRequestedOutput("probabilities")
        output.set_shared_memory("out", 2 * CLASSES * 4, offset=8)
        result = client.infer("tiny2", [tensor], outputs=[output])
        placed = result.get_output("probabilities")
        shape = placed["shape"] if protocol == "http" else list(placed.shape)
        assert [int(d) for d in shape] == [2, CLASSES]
        got = triton_shm.get_contents_as_numpy(output_handle, np.float32, [2, CLASSES], offset=8)
        plain = module.InferInput("pixels", list(pixels.shape), "UINT8")
        plain.set_data_from_numpy(pixels)
        expected = client.infer("tiny2", [plain]).as_numpy("probabilities")
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    finally:
        client.unregister_system_shared_memory("in")
    assert not _mapped(tiny_server, in_key) and _mapped(tiny_server, out_key)
    client.unregister_system_shared_memory()
    assert not _mapped(tiny_server, out_key)


def test_shared_memory_refusals(tiny_server: LiveServer, regions: Callable[[str, int], Any]) -> None:
    http, grpc = _http(tiny_server), _grpc(tiny_server)
    regions("/t38-small", 64)
    url = f"{tiny_server.http_url}/v2/systemsharedmemory"
    refused = httpx.post(
        f"{url}/region/big/register", json={"key": "/t38-small", "offset": 0, "byte_size": 128}
    )
    assert refused.status_code == 422 and "holds 64 bytes" in refused.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        grpc.register_system_shared_memory("gone", "/t38-no-such-key", 16)
    assert (
        caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        and "cannot be opened" in caught.value.message()
    )
    assert httpx.get(f"{url}/region/nope/status").status_code == 404

    tensor = triton_http.InferInput("pixels", [1, 3, SIZE, SIZE], "UINT8")
    tensor.set_shared_memory("nope", 3 * SIZE * SIZE)
    with pytest.raises(InferenceServerException) as caught:
        http.infer("tiny2", [tensor])
    assert caught.value.status() == "404" and "'nope' is not registered" in caught.value.message()

    http.register_system_shared_memory("small", "/t38-small", 64)
    try:
        tensor.set_shared_memory("small", 64)  # the region is smaller than the tensor
        with pytest.raises(InferenceServerException) as caught:
            http.infer("tiny2", [tensor])
        assert caught.value.status() == "422"
        pixels = triton_grpc.InferInput("pixels", [1, 3, SIZE, SIZE], "UINT8")
        pixels.set_data_from_numpy(np.zeros((1, 3, SIZE, SIZE), dtype=np.uint8))
        output = triton_grpc.InferRequestedOutput("probabilities")
        output.set_shared_memory("small", 8)  # 16 bytes of output
        with pytest.raises(InferenceServerException) as caught:
            grpc.infer("tiny2", [pixels], outputs=[output])
        assert (
            caught.value.status() == "StatusCode.INVALID_ARGUMENT"
            and "takes 16 bytes" in caught.value.message()
        )
        # The other extensions and health stay as they were.
        assert http.is_server_ready() and http.is_model_ready("tiny2")
        index = {row["name"]: row["state"] for row in http.get_model_repository_index()}
        assert index["tiny2"] == "READY"
    finally:
        http.unregister_system_shared_memory("small")


def test_cuda_shared_memory_is_refused_clearly(tiny_server: LiveServer) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _grpc(tiny_server).register_cuda_shared_memory("c", base64.b64encode(b"handle"), 0, 64)
    assert caught.value.status() == "StatusCode.UNAVAILABLE" and "not supported" in caught.value.message()
    response = httpx.post(
        f"{tiny_server.http_url}/v2/cudasharedmemory/region/c/register",
        json={"raw_handle": {"b64": "aGFuZGxl"}, "device_id": 0, "byte_size": 64},
    )
    assert response.status_code == 400 and "system shared memory" in response.json()["error"]
    assert _http(tiny_server).get_cuda_shared_memory_status() == []
