"""Lower-precision models through the real server: `lite0-fp16` and `lite0-int8` are ordinary models
(names are just names) and answer the same top-1 as `lite0` on the real photos."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import LiveServer, ServerFactory

pytestmark = pytest.mark.slow

MODELS = ("lite0", "lite0-fp16", "lite0-int8")


@pytest.fixture(scope="module")
def precision_server(server_factory: ServerFactory, precision_repository: Path) -> LiveServer:
    return server_factory(precision_repository, "--models", ",".join(MODELS))


def top1(server: LiveServer, body: bytes, model: str) -> tuple[int, float]:
    response = httpx.post(
        f"{server.http_url}/classify",
        params={"variant": model, "top_k": 1},
        content=body,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == model and answer["weights"] == "imagenet"
    best = answer["results"][0]["predictions"][0]
    return best["class_id"], best["score"]


@pytest.mark.parametrize("model", ["lite0-fp16", "lite0-int8"])
@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_same_top1_as_lite0(
    precision_server: LiveServer, real_photos: dict[str, bytes], model: str, photo: str
) -> None:
    expected, expected_score = top1(precision_server, real_photos[photo], "lite0")
    got, score = top1(precision_server, real_photos[photo], model)
    assert got == expected
    assert expected in (range(281, 286) if photo == "chelsea" else {967, 968})
    assert abs(score - expected_score) < (0.02 if model.endswith("fp16") else 0.15)


def test_models_are_listed_and_ready(precision_server: LiveServer) -> None:
    body = httpx.get(f"{precision_server.http_url}/v1/models", timeout=10).json()
    models = {m["name"]: m for m in body["models"]}
    assert set(MODELS) <= set(models)
    for name in MODELS:
        assert models[name]["ready"] is True
        assert models[name]["inputs"][0]["dtype"] == "uint8" and models[name]["resolution"] == 224
