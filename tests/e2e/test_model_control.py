"""Model management end to end: tritonclient's repository calls, versions, hot reload in poll mode under
load, lazy loading under a memory budget, and memory released by unload. Real servers, real models."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import copy_model
from tests.waiting import until_sync

pytestmark = pytest.mark.slow


def classify(url: str, image: bytes, model: str, **params: object) -> httpx.Response:
    return httpx.post(
        f"{url}/classify",
        params={"variant": model, **params},
        content=image,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )


@contextlib.contextmanager
def classifying(url: str, image: bytes, versions: list[int], failures: list[str]) -> Iterator[None]:
    """Three clients classify `image` with lite0 without pause while the block runs: each answer's
    version goes to `versions`, each failure to `failures`."""
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while not stop.is_set():
                answer = session.post(
                    f"{url}/classify", params={"variant": "lite0"},
                    content=image, headers={"content-type": "image/jpeg"},
                )  # fmt: skip
                if answer.status_code == 200:
                    versions.append(answer.json()["version"])
                else:
                    failures.append(f"{answer.status_code} {answer.text}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_tritonclient_loads_classifies_and_unloads(server_factory, model_repository, real_photos) -> None:
    server = server_factory(model_repository, "--model-control", "explicit", "--models", "lite0")
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = triton_grpc.InferenceServerClient(server.grpc_address)
    index = {(m["name"], m.get("version", "")): m for m in http.get_model_repository_index()}
    assert index[("lite0", "1")]["state"] == "READY"
    assert ("b0", "") in index  # in the repository, never loaded
    assert not http.is_model_ready("b0") and not grpc.is_model_ready("b0")
    assert not grpc.is_model_ready("no-such-model")  # OK with ready=false, as Triton

    http.load_model("b0")
    assert http.is_model_ready("b0") and grpc.is_model_ready("b0", "1")
    answer = classify(server.http_url, real_photos["chelsea"], "b0")
    assert answer.status_code == 200 and answer.json()["version"] == 1

    grpc.unload_model("b0")
    assert not grpc.is_model_ready("b0")
    refused = classify(server.http_url, real_photos["chelsea"], "b0")
    assert refused.status_code == 503 and "not loaded (unloaded)" in refused.json()["error"]["message"]
    rows = [m for m in grpc.get_model_repository_index().models if m.name == "b0"]
    assert [(m.version, m.state, m.reason) for m in rows] == [("1", "UNAVAILABLE", "unloaded")]

    grpc.load_model("b0")  # and back, over gRPC this time
    assert classify(server.http_url, real_photos["chelsea"], "b0").status_code == 200
    with pytest.raises(InferenceServerException, match="unknown model 'b9'"):
        http.load_model("b9")
    with pytest.raises(InferenceServerException, match="unknown model 'b9'"):
        grpc.load_model("b9")


def test_load_and_unload_need_the_admin_key(server_factory, model_repository) -> None:
    server = server_factory(
        model_repository, "--model-control", "explicit", "--models", "lite0",
        env={"EFFNET_API_KEY": "user-key", "EFFNET_ADMIN_API_KEY": "admin-key"},
    )  # fmt: skip
    url = f"{server.http_url}/v2/repository/models/b0/load"
    user = {"Authorization": "Bearer user-key"}
    admin = {"Authorization": "Bearer admin-key"}
    assert httpx.post(url, headers=user, timeout=60).status_code == 401
    assert httpx.post(f"{server.http_url}/v2/repository/index", headers=user, timeout=10).status_code == 200
    assert httpx.post(url, headers=admin, timeout=60).status_code == 200
    grpc = triton_grpc.InferenceServerClient(server.grpc_address)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        grpc.unload_model("b0", headers={"authorization": "Bearer user-key"})
    grpc.unload_model("b0", headers={"authorization": "Bearer admin-key"})


def test_load_is_refused_outside_explicit_mode(live_server) -> None:
    answer = httpx.post(f"{live_server.http_url}/v2/repository/models/b0/load", timeout=10)
    assert answer.status_code == 503 and "model control mode 'none'" in answer.json()["error"]
    assert "Retry-After" in answer.headers


def test_poll_mode_swaps_in_version_2_under_load_with_zero_failures(
    server_factory, model_repository, tmp_path, real_photos
) -> None:
    repository = tmp_path / "repository"
    copy_model(model_repository / "lite0" / "1", repository, "lite0", 1)
    server = server_factory(repository, "--model-control", "poll", "--poll-interval-s", "0.5")
    versions: list[int] = []
    failures: list[str] = []
    with classifying(server.http_url, real_photos["chelsea"], versions, failures):
        time.sleep(1.0)
        swap_started = time.monotonic()
        copy_model(model_repository / "lite0" / "1", repository, "lite0", 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.05)
        swap_seconds = time.monotonic() - swap_started
        time.sleep(1.0)
    assert not failures, failures[:3]
    assert versions[0] == 1 and versions[-1] == 2, "every answer names the version that ran it"
    print(f"poll swap: version 2 answered {swap_seconds:.2f} s after the copy, {len(versions)} requests")
    index = httpx.post(f"{server.http_url}/v2/repository/index", timeout=10).json()
    states = {(m["name"], m.get("version")): m.get("state") for m in index}
    assert states[("lite0", "2")] == "READY" and states[("lite0", "1")] == "UNAVAILABLE"


def test_memory_budget_for_two_serves_four_models_round_robin(
    server_factory, model_repository, tmp_path, real_photos
) -> None:
    repository = tmp_path / "repository"
    for index in range(4):
        copy_model(model_repository / "lite0" / "1", repository, f"lite0-copy{index}")
    probe = server_factory(repository, "--models", "lite0-copy0")
    one_model = httpx.get(f"{probe.http_url}/v1/models/lite0-copy0", timeout=10).json()["versions"][0]
    probe.stop()
    # Two fit, three do not. A load measures what it grew the process by, and in a process that has
    # unloaded models before, lite0 read 130-160 MB where a fresh process reads 160-165: the margin
    # below three is kept wide.
    budget_mb = int(2.2 * one_model["memory_bytes"] / 2**20) + 1
    server = server_factory(repository, "--memory-budget-mb", str(budget_mb), "--max-queue-size", "256")
    process = psutil.Process(server.process.pid)
    base = process.memory_info().rss
    peak = base
    for _round in range(3):
        for index in range(4):
            answer = classify(server.http_url, real_photos["chelsea"], f"lite0-copy{index}")
            assert answer.status_code == 200, answer.text
            assert 281 <= answer.json()["results"][0]["predictions"][0]["class_id"] <= 285
            peak = max(peak, process.memory_info().rss)
    models = httpx.get(f"{server.http_url}/v1/models", timeout=10).json()["models"]
    held = [v["memory_bytes"] for m in models for v in m["versions"] if v["ready"]]
    assert 1 <= len(held) < 4 and sum(held) <= budget_mb << 20  # never all four: evictions made room
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    assert 'effnet_model_unloads_total{model="lite0-copy0",reason="evicted"}' in metrics
    slack = 48 << 20  # allocator and Python noise
    print(f"budget {budget_mb} MB, base RSS {base / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB")
    assert peak <= base + (budget_mb << 20) + slack


def test_unload_releases_memory_over_twenty_cycles(server_factory, model_repository) -> None:
    server = server_factory(
        model_repository, "--model-control", "explicit", "--models", "lite0", "--intra-op-threads", "1"
    )
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    process = psutil.Process(server.process.pid)
    pixels = triton_http.InferInput("pixels", [1, 3, 224, 224], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.uint8))
    samples = []
    for _ in range(20):
        client.load_model("b0")
        client.infer("b0", [pixels])
        client.unload_model("b0")
        samples.append(process.memory_info().rss)
    # The allocator keeps some freed blocks for a while, so one reading after an unload swings by
    # +-25 MB; a leak lifts every reading. Compare the lowest of the last five with the lowest of
    # cycles 5-9.
    growth = min(samples[-5:]) - min(samples[4:9])
    print(f"RSS after unload, cycles 5..20: {[round(s / 2**20) for s in samples[4:]]} MB")
    assert growth < 24 << 20, f"RSS grew {growth / 2**20:.0f} MB over 15 load/unload cycles"


def test_poll_mode_serves_plain_copies_under_load(
    server_factory, model_repository, tmp_path, real_photos
) -> None:
    """`cp -r` as most people publish: a version copied to a new number, a model folder copied under a
    new name (model.json still names the original: the folder decides); a broken version is logged
    once and the serving one carries on. No request fails meanwhile."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "lite0", repository / "lite0")
    poll_s = 0.3
    server = server_factory(repository, "--model-control", "poll", "--poll-interval-s", str(poll_s))
    versions: list[int] = []
    failures: list[str] = []
    with classifying(server.http_url, real_photos["chelsea"], versions, failures):
        until_sync(lambda: len(versions) >= 5, what="lite0/1 answering")
        copied = time.monotonic()
        shutil.copytree(repository / "lite0" / "1", repository / "lite0" / "2")
        until_sync(lambda: versions[-1] == 2, within_s=60, what="lite0/2 answering")
        version_seconds = time.monotonic() - copied
        copied = time.monotonic()
        shutil.copytree(repository / "lite0", repository / "lite0-copy")
        until_sync(
            lambda: classify(server.http_url, real_photos["chelsea"], "lite0-copy").status_code == 200,
            within_s=60,
            what="lite0-copy answering",
        )
        model_seconds = time.monotonic() - copied
        broken = repository / "lite0" / "3"
        shutil.copytree(repository / "lite0" / "1", broken)
        (broken / "model.onnx").write_bytes(b"\x08\x01 half a graph")
        until_sync(lambda: "model=lite0 version=3" in server.log(), within_s=30, what="version 3 tried")
        time.sleep(10 * poll_s)  # an observation window: ten more scans see the same broken files
    assert not failures, failures[:3]
    print(f"cp -r: a version served after {version_seconds:.2f} s, a model after {model_seconds:.2f} s")
    assert version_seconds < 20 * poll_s and model_seconds < 20 * poll_s
    assert versions[-1] == 2, "the broken version 3 never took over"
    log = server.log()
    assert log.count("event=model_failed model=lite0 version=3") == 1, "logged once, not every poll"
    failed_lines = [line for line in log.splitlines() if "event=model_failed" in line]
    assert not [line for line in failed_lines if "version=2" in line or "lite0-copy" in line], failed_lines
    models = {m["name"]: m for m in httpx.get(f"{server.http_url}/v1/models", timeout=10).json()["models"]}
    copy_versions = {v["version"]: v for v in models["lite0-copy"]["versions"]}
    assert copy_versions[2]["ready"] and copy_versions[2]["recorded_as"] == "lite0/1"
