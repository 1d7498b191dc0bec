"""Faults: an exception inside a batch's inference (injected in process), and broken model files at
start (the real server as a subprocess)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service._generated.inference import grpc_service_pb2 as v2pb
from service._generated.inference import grpc_service_pb2_grpc as v2pb_grpc
from tests.robustness.conftest import TINY, InProcess, ServerFactory
from tests.tiny_model import png

ERROR_ID = re.compile(r"error id [0-9a-f]{8}")


async def test_failing_batch_answers_500_with_an_id_and_the_next_batch_runs(inprocess: InProcess) -> None:
    url = f"{inprocess.http_url}/classify?variant={TINY}&top_k=1"
    async with httpx.AsyncClient(timeout=30) as client:
        inprocess.runner.fail_next = 1
        failed = await client.post(url, content=png())
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["code"] == "inference_failed" and ERROR_ID.search(error["message"]), error
        assert "Traceback" not in failed.text and "blew up" not in failed.text  # no internals leak
        ok = await client.post(url, content=png((10, 10, 220)))
        assert ok.status_code == 200 and ok.json()["results"][0]["predictions"][0]["label"] == "blue"

        async with grpc.aio.insecure_channel(inprocess.grpc_address) as channel:
            inprocess.runner.fail_next = 1
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.ClassifierStub(channel).Classify(
                    pb.ClassifyRequest(model=TINY, top_k=1, images=[png(), png()]), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert ERROR_ID.search(caught.value.details() or "")

            inprocess.runner.fail_next = 1
            request = v2pb.ModelInferRequest(model_name=TINY)
            request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                png()
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await v2pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            response = await v2pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            assert [o.name for o in response.outputs] == ["logits", "probabilities"]

        inprocess.runner.fail_next = 1
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not sent"]}]}
        v2_failed = await client.post(f"{inprocess.http_url}/v2/models/{TINY}/infer", json=body)
        assert v2_failed.status_code == 400  # bad input never reaches the runner ...
        assert inprocess.runner.fail_next == 1  # ... so the armed fault is still waiting
        inprocess.runner.fail_next = 0
    assert inprocess.batcher.batches_failed == 3
    assert inprocess.batcher.queue_depth == 0
    assert inprocess.metric("effnet_requests_total", protocol="http", model=TINY, code="500") == 1
    assert inprocess.metric("effnet_requests_total", protocol="http", model=TINY, code="200") == 1


def _copy_model(source: Path, target_root: Path, name: str) -> Path:
    """A copy of an exported model under another name (model.json's name follows)."""
    folder = target_root / name / "1"
    folder.mkdir(parents=True)
    for file in ("model.onnx", "labels.txt"):
        os.link(source / "1" / file, folder / file)
    spec = json.loads((source / "1" / "model.json").read_text())
    spec["name"] = name
    (folder / "model.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture(scope="module")
def broken_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lite0 intact beside b0 copies with a missing, a truncated, a corrupt (digest updated, so ONNX
    Runtime itself must refuse it) model.onnx, and an invalid model.json."""
    import hashlib

    root = tmp_path_factory.mktemp("broken")
    _copy_model(model_repository / "lite0", root, "lite0")
    (_copy_model(model_repository / "b0", root, "missing") / "model.onnx").unlink()

    truncated = _copy_model(model_repository / "b0", root, "truncated") / "model.onnx"
    data = truncated.read_bytes()
    truncated.unlink()
    truncated.write_bytes(data[: len(data) // 3])

    corrupt = _copy_model(model_repository / "b0", root, "corrupt")
    garbage = os.urandom(4096)
    (corrupt / "model.onnx").unlink()
    (corrupt / "model.onnx").write_bytes(garbage)
    spec = json.loads((corrupt / "model.json").read_text())
    spec["onnx_sha256"] = hashlib.sha256(garbage).hexdigest()
    (corrupt / "model.json").write_text(json.dumps(spec))

    bad_json = _copy_model(model_repository / "b0", root, "badjson") / "model.json"
    bad_json.write_text('{"name": "badjson", "version": 1, "crop_size": "huge"')
    return root


BROKEN = {
    "missing": "is missing",
    "truncated": "sha256",
    "corrupt": "onnxruntime could not load",
    "badjson": "model.json is invalid",
}


@pytest.mark.slow
def test_broken_models_are_reported_and_the_others_serve(
    server_factory: ServerFactory, broken_repository: Path, real_photos: dict[str, bytes]
) -> None:
    server = server_factory(broken_repository, wait=False)
    models = {m["name"]: m for m in _wait_until_loaded(server.http_url)}
    assert models["lite0"]["ready"] is True
    for name, reason in BROKEN.items():
        assert models[name]["ready"] is False and models[name]["state"] == "failed"
        assert reason in models[name]["reason"], models[name]
    readyz = httpx.get(f"{server.http_url}/readyz", timeout=10)
    assert readyz.status_code == 503
    readiness = readyz.json()["models"]
    assert readiness["lite0"] == "ready"
    for name, reason in BROKEN.items():
        assert readiness[name].startswith("failed: ") and reason in readiness[name]
    ok = httpx.post(f"{server.http_url}/classify?variant=lite0", content=real_photos["coffee"], timeout=60)
    assert ok.status_code == 200 and ok.json()["results"][0]["predictions"][0]["class_id"] == 967
    refused = httpx.post(f"{server.http_url}/classify?variant=corrupt", content=real_photos["coffee"])
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert server.stop() == 0


def _wait_until_loaded(url: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            models = httpx.get(f"{url}/v1/models", timeout=5).json()["models"]
            if all(m["state"] != "loading" for m in models):
                return models
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("models still loading after 120 s")


@pytest.mark.slow
def test_strict_start_fails_on_a_broken_model(server_factory: ServerFactory, broken_repository: Path) -> None:
    server = server_factory(broken_repository, "--models", "lite0,truncated", "--strict", wait=False)
    assert server.process.wait(120) != 0
    log = server.log()
    assert "startup_failed" in log and "truncated" in log
