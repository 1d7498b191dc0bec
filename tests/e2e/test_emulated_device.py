"""A real server on the emulated device (EFFNET_EMULATE_DEVICE): it serves every image through the
replayed curve in CUDA-sized batches, and says everywhere that its device is emulated."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import LiveServer, ServerFactory
from tests.tiny_model import SIZE, png, write_model


@pytest.fixture(scope="module")
def emulated_server(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    repository: Path = tmp_path_factory.mktemp("emulated")
    write_model(repository, "tiny")
    # b0 fp16's curve, ten times slower: 15 ms for one image, 190 ms for 256
    return server_factory(repository, env={"EFFNET_EMULATE_DEVICE": "b0-fp16:10"})


def test_the_model_says_its_device_is_emulated(emulated_server: LiveServer) -> None:
    info = httpx.get(f"{emulated_server.http_url}/v1/models/tiny", timeout=10).json()
    assert info["provider"] == "EmulatedDevice(b0-fp16x10)"
    assert info["batcher"]["max_batch_size"] == 256  # batches as on CUDA
    assert "event=emulated_device" in emulated_server.log()


def test_requests_are_answered_in_batches_at_the_curves_pace(emulated_server: LiveServer) -> None:
    url = f"{emulated_server.http_url}/classify"

    def one(_: int) -> httpx.Response:
        headers = {"content-type": "image/png"}
        return httpx.post(url, params={"top_k": 4}, content=png(), headers=headers, timeout=30)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert all(len(a.json()["results"][0]["predictions"]) == 4 for a in answers)
    pixels = np.zeros((2, 3, SIZE, SIZE), np.uint8)
    v2 = httpx.post(
        f"{emulated_server.http_url}/v2/models/tiny/infer",
        json={"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                          "data": pixels.ravel().tolist()}]},
        timeout=30,
    )  # fmt: skip
    assert v2.status_code == 200 and v2.json()["outputs"][1]["shape"] == [2, 4]
    metrics = httpx.get(f"{emulated_server.http_url}/metrics", timeout=10).text
    batches = [
        line for line in metrics.splitlines() if line.startswith('effnet_batch_size_count{model="tiny"}')
    ]
    count = float(batches[0].split()[-1])
    assert count < 33  # 33 requests: some shared a batch while the device was busy
