"""Split mode end to end: a supervisor, one engine process and two fronts on real sockets, the tiny
model on the emulated device (slow enough that requests are in flight when a process dies).

The protocol suites run in split mode too: `EFFNET_FRONT_PROCESSES=2 pytest tests/e2e/test_http_api.py
tests/e2e/test_grpc_api.py tests/e2e/test_v2_http.py tests/e2e/test_v2_grpc.py` (the server fixture
passes the environment on)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service._generated.inference import grpc_service_pb2 as pb
from service._generated.inference import grpc_service_pb2_grpc as pb_grpc
from tests.e2e.conftest import LiveServer, ServerFactory, copy_model
from tests.tiny_model import SIZE, png, write_model
from tests.waiting import until_sync

PNG = {"content-type": "image/png"}
# b0 fp32's curve times 100: one image 141 ms, so calls are in flight long enough to be hit.
SLOW = "b0:100"


CACHED = "tiny-cached"  # after "seen" by name: the default model stays "seen"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("split")
    write_model(path, "tiny")
    write_model(path, "seen", explain=True)  # features and maps
    write_model(path, CACHED)
    (path / CACHED / "config.json").write_text(json.dumps({"response_cache": True}))
    return path


def start_split(factory: ServerFactory, repository: Path, **env: str) -> LiveServer:
    """A split server with both fronts connected to the engine (readiness is one front's answer)."""
    server = factory(repository, "--front-processes", "2", env={"EFFNET_EMULATE_DEVICE": SLOW, **env})
    until_sync(lambda: len(listening_fronts(server)) == 2, within_s=60, what="both fronts listening")
    return server


def listening_fronts(server: LiveServer) -> list[int]:
    """The fronts that listen on both ports. A front connects to the engine before it listens, so a
    connection made while only one front listens is refused once that one dies."""
    ports = {server.http_port, server.grpc_port}
    found = []
    for pid in roles(server)["front"]:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if ports <= {s.laddr.port for s in sockets if s.status == psutil.CONN_LISTEN}:
            found.append(pid)
    return found


def roles(server: LiveServer) -> dict[str, list[int]]:
    """The pids of the supervisor's engine and fronts."""
    found: dict[str, list[int]] = {"engine": [], "front": []}
    for child in psutil.Process(server.process.pid).children():
        try:
            with_role = child.cmdline()
        except psutil.NoSuchProcess:  # reaped meanwhile
            continue
        if "--split-role" in with_role:
            found[with_role[with_role.index("--split-role") + 1]].append(child.pid)
    return found


def classify(server: LiveServer, timeout: float = 30, **params: object) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/classify",
        params={"top_k": 2, "variant": "tiny", **params},
        content=png(),
        headers=PNG,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def split_server(server_factory: ServerFactory, repository: Path) -> LiveServer:
    return start_split(server_factory, repository)


def test_every_protocol_is_served_by_the_fronts(split_server: LiveServer) -> None:
    assert len(roles(split_server)["front"]) == 2 and len(roles(split_server)["engine"]) == 1
    response = classify(split_server)
    assert response.status_code == 200 and response.json()["results"][0]["predictions"][0]["label"] == "red"
    with grpc.insecure_channel(split_server.grpc_address) as channel:
        ours = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="tiny", images=[png()], top_k=1), timeout=30
        )
        assert ours.model == "tiny" and len(ours.results[0].predictions) == 1
        pixels = np.zeros((2, 3, SIZE, SIZE), np.uint8)
        request = pb.ModelInferRequest(model_name="tiny", id="r-7")
        request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
        request.raw_input_contents.append(pixels.tobytes())
        v2 = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert v2.id == "r-7" and list(v2.outputs[1].shape) == [2, 4]
    image = httpx.post(
        f"{split_server.http_url}/v2/models/tiny/infer",
        json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                          "data": [{"b64": __import__("base64").b64encode(png()).decode()}]}]},
        timeout=30,
    )  # fmt: skip
    assert image.status_code == 200, image.text
    info = httpx.get(f"{split_server.http_url}/v1/models/tiny", timeout=10).json()
    assert info["provider"].startswith("EmulatedDevice") and info["state"] == "ready"


def test_the_engines_response_cache_answers_every_front(split_server: LiveServer) -> None:
    """A model with `response_cache`: repeated photos and repeated V2 pixels, whichever front takes
    them, are answered from the engine's cache, with the first answer's rows."""
    answers = [classify(split_server, variant=CACHED) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, answers[0].text
    assert answers[0].json()["cached"] is False
    assert all(a.json()["cached"] is True for a in answers[1:])
    assert {json.dumps(a.json()["results"][0]["predictions"]) for a in answers} == {
        json.dumps(answers[0].json()["results"][0]["predictions"])
    }
    pixels = np.full((1, 3, SIZE, SIZE), 200, np.uint8)
    replies = []
    with grpc.insecure_channel(split_server.grpc_address) as channel:
        for _ in range(2):
            request = pb.ModelInferRequest(model_name=CACHED)
            request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
            request.raw_input_contents.append(pixels.tobytes())
            replies.append(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30))
    assert "cached" not in replies[0].parameters and replies[1].parameters["cached"].bool_param is True
    assert replies[0].raw_output_contents == replies[1].raw_output_contents
    text = httpx.get(f"{split_server.http_url}/metrics", timeout=10).text
    hits = re.findall(
        rf'^effnet_cache_lookups_total\{{[^}}]*model="{CACHED}"[^}}]*result="hit"[^}}]*\}} (\S+)$', text, re.M
    )
    assert hits and float(hits[0]) >= 4, hits


def test_a_memory_budget_loads_lazily_and_evicts_in_the_engine(
    server_factory: ServerFactory, model_repository: Path, real_photos: dict[str, bytes], tmp_path: Path
) -> None:
    """Four copies of lite0 (real sessions, no emulation), a budget for two: the fronts send each request
    to a model the engine loads on demand, evicting the least recently used; every one is answered."""
    repository = tmp_path / "budget"
    for index in range(4):
        copy_model(model_repository / "lite0" / "1", repository, f"lite0-copy{index}")
    real = {"EFFNET_EMULATE_DEVICE": ""}
    probe = start_split(server_factory, repository, EFFNET_MODELS="lite0-copy0", **real)
    info = httpx.get(f"{probe.http_url}/v1/models/lite0-copy0", timeout=10).json()
    probe.stop()
    budget_mb = int(2.2 * info["versions"][0]["memory_bytes"] / 2**20) + 1
    server = start_split(server_factory, repository, EFFNET_MEMORY_BUDGET_MB=str(budget_mb), **real)
    for _round in range(2):
        for index in range(4):
            answer = httpx.post(
                f"{server.http_url}/classify",
                params={"variant": f"lite0-copy{index}"},
                content=real_photos["chelsea"],
                headers={"content-type": "image/jpeg"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert 281 <= answer.json()["results"][0]["predictions"][0]["class_id"] <= 285  # a cat
    models = httpx.get(f"{server.http_url}/v1/models", timeout=10).json()["models"]
    held = [v["memory_bytes"] for m in models for v in m["versions"] if v["ready"]]
    assert 1 <= len(held) < 4 and sum(held) <= budget_mb << 20, (budget_mb, held)
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    evicted = r'^effnet_model_unloads_total\{[^}]*reason="evicted"[^}]*\} [1-9]'
    assert re.search(evicted, metrics, re.M), metrics


def test_system_shared_memory_is_refused_with_the_reason(split_server: LiveServer) -> None:
    """A region registered with one front would be unknown to the others: refused, saying why."""
    register = httpx.post(
        f"{split_server.http_url}/v2/systemsharedmemory/region/r0/register",
        json={"key": "/effnet-split-test", "offset": 0, "byte_size": 64},
        timeout=10,
    )
    assert register.status_code == 400 and "split mode" in register.json()["error"], register.text
    with grpc.insecure_channel(split_server.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryStatus(
            pb.SystemSharedMemoryStatusRequest(), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "split mode" in refused.value.details()


def test_calls_from_both_fronts_share_the_engines_batches(split_server: LiveServer) -> None:
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: classify(split_server), range(48)))
    assert [a.status_code for a in answers] == [200] * 48
    assert split_server.log().count("event=front_connected") >= 2
    # Both fronts are ready, and the page's address was said once, not by each.
    until_sync(lambda: split_server.log().count("event=ready ") >= 2, 30, "both fronts ready")
    assert len(re.findall(r" open http://\S+/$", split_server.log(), re.M)) == 1
    # One /metrics, whichever front answers it: both fronts' requests and the engine's batches.
    text = httpx.get(f"{split_server.http_url}/metrics", timeout=10).text
    served = re.findall(
        r'^effnet_requests_total\{code="200",model="tiny",protocol="http"\} (\S+)$', text, re.M
    )
    assert served and float(served[0]) >= 48, served
    batches = re.findall(r'^effnet_batch_size_count\{model="tiny"\} (\S+)$', text, re.M)
    assert batches and 1 <= float(batches[0]) < float(served[0])
    assert {'process="engine"', 'process="front-0"', 'process="front-1"'} <= set(
        re.findall(r'process="[a-z0-9-]+"', text)
    )
    # The fronts' one-image photos (decoded there) took the engine's per-batch path.
    per_batch = re.findall(r'^effnet_split_engine_calls_total\{[^}]*path="batch"[^}]*\} (\S+)$', text, re.M)
    assert per_batch and float(per_batch[0]) >= 48, per_batch


def test_one_image_pixel_calls_are_answered_per_batch_with_their_own_rows(split_server: LiveServer) -> None:
    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 256, (1, 3, SIZE, SIZE), dtype=np.uint8) for _ in range(16)]

    def infer(pixels: np.ndarray) -> np.ndarray:
        request = pb.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
        request.raw_input_contents.append(pixels.tobytes())
        with grpc.insecure_channel(split_server.grpc_address) as channel:
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        index = [o.name for o in answer.outputs].index("probabilities")
        shape = list(answer.outputs[index].shape)
        return np.frombuffer(answer.raw_output_contents[index], np.float32).reshape(shape)

    with ThreadPoolExecutor(16) as pool:
        one_each = list(pool.map(infer, photos))  # together: they share batches
    all_at_once = infer(np.concatenate(photos))  # one call of 16: the general path
    assert all(rows.shape == (1, 4) for rows in one_each)
    np.testing.assert_allclose(np.concatenate(one_each), all_at_once, rtol=1e-6)


def test_embed_and_explain_are_served_split(split_server: LiveServer) -> None:
    """Extra outputs take the engine's general path; beside one-image classify calls (its per-batch
    path) in the same batches, each gets its own rows."""
    red, green = png((250, 5, 5)), png((5, 250, 5))

    def embed(body: bytes) -> np.ndarray:
        url = f"{split_server.http_url}/embed"
        answer = httpx.post(url, params={"variant": "seen"}, content=body, headers=PNG, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "seen" and answer.json()["dimension"] == 3
        return np.array(answer.json()["results"][0]["vector"])

    with ThreadPoolExecutor(8) as pool:
        classified = [pool.submit(classify, split_server, variant="seen") for _ in range(4)]
        vectors = list(pool.map(embed, [red, green, red, green]))
        assert [c.result().status_code for c in classified] == [200] * 4
    assert vectors[0][0] > vectors[0][1] and vectors[1][1] > vectors[1][0]
    np.testing.assert_allclose(vectors[0], vectors[2])
    np.testing.assert_allclose(vectors[1], vectors[3])
    explained = httpx.post(
        f"{split_server.http_url}/explain", params={"variant": "seen"}, content=red, headers=PNG, timeout=30
    )
    assert explained.status_code == 200, explained.text
    assert explained.headers["content-type"] == "image/png" and explained.headers["x-model"] == "seen"
    assert Image.open(io.BytesIO(explained.content)).size == (20, 20)


@pytest.fixture
def one_slow_instance(server_factory: ServerFactory, repository: Path) -> LiveServer:
    return start_split(server_factory, repository, EFFNET_EMULATE_DEVICE="b0:1000", EFFNET_INSTANCES="1")


def test_a_deadline_crosses_the_boundary(one_slow_instance: LiveServer) -> None:
    """A call that waits in the engine's queue past its deadline is answered 504 and never runs."""
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(classify, one_slow_instance)  # holds the one instance's device for 1.4 s
        until_sync(lambda: in_flight(one_slow_instance) >= 1, within_s=1, what="the first call in the engine")
        late = classify(one_slow_instance, timeout_ms=200)
        assert busy.result().status_code == 200
    assert late.status_code == 504, late.text
    assert classify(one_slow_instance).status_code == 200


def in_flight(server: LiveServer) -> float:
    """The images the engine holds for tiny (queued or running), from the one /metrics."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    found = re.findall(r'^effnet_in_flight_images\{[^}]*model="tiny"[^}]*\} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


def noise_png(side: int = 300) -> bytes:
    """A PNG that does not compress (about 270 KB at 300 x 300)."""

    pixels = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_memory_server(
    server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> LiveServer:
    """1 MB of shared memory per front, and `auto` over a model with a declared accuracy: routed calls
    cross as their encoded bytes, so four 270 KB photos fill a front's part."""
    path = tmp_path_factory.mktemp("split-small")
    write_model(path, "tiny", accuracy=80.0)
    return start_split(server_factory, path, EFFNET_FRONT_SHARED_MEMORY_MB="1")


def classify_auto(server: LiveServer, body: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/classify", params={"variant": "auto", "top_k": 1}, content=body,
        headers=PNG, timeout=timeout,
    )  # fmt: skip


def test_full_shared_memory_is_overload_with_a_retry_hint(small_memory_server: LiveServer) -> None:
    body = noise_png()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: classify_auto(small_memory_server, body), range(16)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert "shared memory is full" in refused.text and "retry-after" in refused.headers


def test_cancelled_calls_free_their_place(small_memory_server: LiveServer) -> None:
    """Clients that give up mid-flight: the engine drops their calls and answers, which frees the
    front's shared memory; eight abandoned photos would fill it twice over if nothing were freed."""
    body = noise_png()
    for _ in range(8):
        with pytest.raises(httpx.TimeoutException):
            classify_auto(small_memory_server, body, timeout=0.05)
    time.sleep(0.5)
    answers = [classify_auto(small_memory_server, body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert "Traceback" not in small_memory_server.log()


def test_engine_death_is_unavailable_at_once_then_served_again(
    server_factory: ServerFactory, repository: Path
) -> None:
    server = start_split(server_factory, repository)
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(classify, server) for _ in range(4)]
        time.sleep(0.05)
        (engine,) = roles(server)["engine"]
        psutil.Process(engine).send_signal(signal.SIGKILL)
        answers = [f.result(timeout=30) for f in in_flight]
    assert all(a.status_code in (200, 503) for a in answers), [a.text for a in answers]
    started = time.monotonic()
    refused = classify(server)
    assert refused.status_code == 503 and time.monotonic() - started < 1.0
    assert httpx.get(f"{server.http_url}/readyz", timeout=5).status_code == 503
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(model="tiny", images=[png()]), timeout=10
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    until_sync(lambda: httpx.get(f"{server.http_url}/readyz", timeout=5).status_code == 200, within_s=60)
    assert classify(server).status_code == 200
    assert engine not in roles(server)["engine"]


def test_a_dead_front_is_replaced_and_the_other_serves_meanwhile(
    server_factory: ServerFactory, repository: Path
) -> None:
    server = start_split(server_factory, repository)
    victim, survivor = roles(server)["front"]
    killed = psutil.Process(victim)
    killed.send_signal(signal.SIGKILL)
    # Until its last thread has exited (a zombie leader is not enough: another thread may still hold
    # the listening socket), a connection hashed to it is queued there and then reset. The supervisor
    # reaps it only once the whole process has gone.
    until_sync(lambda: not killed.is_running(), within_s=10, what="the killed front reaped")
    answers = [classify(server) for _ in range(6)]  # new connections: the kernel sends them to the survivor
    assert [a.status_code for a in answers] == [200] * 6
    until_sync(lambda: len(roles(server)["front"]) == 2 and victim not in roles(server)["front"], within_s=30)
    assert survivor in roles(server)["front"]
    until_sync(lambda: len(listening_fronts(server)) == 2, within_s=60, what="the replacement listening")
    assert classify(server).status_code == 200


def test_a_stream_gets_one_answer_per_request_when_the_engine_dies_mid_stream(
    server_factory: ServerFactory, repository: Path
) -> None:
    """V2 streaming over a front while the engine is killed: every request on the stream is answered
    exactly once (served, or UNAVAILABLE while the engine is away), the stream goes on, and nothing hangs."""
    server = start_split(server_factory, repository)
    count = 60
    pixels = np.zeros((1, 3, SIZE, SIZE), np.uint8).tobytes()
    (engine,) = roles(server)["engine"]

    async def run() -> list[pb.ModelStreamInferResponse]:
        async def requests():  # type: ignore[no-untyped-def]
            for i in range(count):
                if i == 20:
                    psutil.Process(engine).send_signal(signal.SIGKILL)
                request = pb.ModelInferRequest(model_name="tiny", id=f"s{i}")
                request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 3, SIZE, SIZE])
                request.raw_input_contents.append(pixels)
                yield request
                await asyncio.sleep(0.02)

        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return [answer async for answer in stub.ModelStreamInfer(requests(), timeout=60)]

    answers = asyncio.run(run())
    ids = sorted(a.infer_response.id for a in answers)
    assert len(answers) == count and ids == sorted(f"s{i}" for i in range(count))
    failed = [a.error_message for a in answers if a.error_message]
    served = [a for a in answers if not a.error_message]
    assert served and all(a.infer_response.outputs for a in served)
    assert all(message.startswith("UNAVAILABLE") for message in failed), failed
    until_sync(lambda: httpx.get(f"{server.http_url}/readyz", timeout=5).status_code == 200, within_s=60)


def test_sigterm_drains_the_calls_in_flight(server_factory: ServerFactory, repository: Path) -> None:
    server = start_split(server_factory, repository, EFFNET_EMULATE_DEVICE="b0:1000")  # 1.4 s a batch
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(classify, server) for _ in range(4)]
        time.sleep(0.7)  # all four connected: one batch on the device, the others queued
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=30) for f in in_flight]
    assert [a.status_code for a in answers] == [200] * 4
    assert server.process.wait(30) == 0
    assert "event=split_stopped exit_code=0" in server.log()
