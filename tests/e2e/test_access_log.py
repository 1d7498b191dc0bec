"""The access log of a real server: one JSON line per request over HTTP and gRPC, with the fields an
operator filters on; `--no-access-log` leaves them out and keeps everything else."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from tests.e2e.conftest import LiveServer, ServerFactory
from tests.tiny_model import png, write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("access-log")
    write_model(repository, "tiny")
    return repository


def json_lines(server: LiveServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def access_lines(server: LiveServer, within_s: float = 5.0, count: int = 0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        found = [line for line in json_lines(server) if line.get("event") == "access"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def send_requests(server: LiveServer) -> None:
    ok = httpx.post(
        f"{server.http_url}/classify?top_k=1",
        content=png(),
        headers={"content-type": "image/png", "x-request-id": "req-http-1"},
        timeout=10,
    )
    assert ok.status_code == 200
    missing = httpx.post(f"{server.http_url}/classify?variant=nope", content=png(), timeout=10)
    assert missing.status_code == 404
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        stub.Classify(classifier_pb2.ClassifyRequest(model="tiny", images=[png()], top_k=1, id="req-grpc-1"))


def test_each_request_has_an_access_line_with_fields(
    server_factory: ServerFactory, tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, "--log-json")
    send_requests(server)
    lines = access_lines(server, count=3)
    by_id = {line["request_id"]: line for line in lines}
    http_line, grpc_line = by_id["req-http-1"], by_id["req-grpc-1"]
    assert http_line["protocol"] == "http" and http_line["route"] == "POST /classify"
    assert http_line["model"] == "tiny" and http_line["status"] == 200
    assert isinstance(http_line["ms"], int | float) and http_line["ms"] >= 0
    assert grpc_line["route"] == "effnet.v1.Classifier/Classify" and grpc_line["status"] == "OK"
    (refused,) = [line for line in lines if line["status"] == 404]
    assert refused["model"] == "unknown" and refused["request_id"] not in ("", "-")  # the id the server made
    # Every JSON line's event is a field of its own, not buried in a message string.
    ready = [line for line in json_lines(server) if line.get("event") == "ready"]
    assert ready and ready[0]["models"] == "tiny"
    server.stop()


def test_no_access_log_leaves_the_other_lines(server_factory: ServerFactory, tiny_repository: Path) -> None:
    server = server_factory(tiny_repository, "--log-json", "--no-access-log")
    send_requests(server)
    time.sleep(0.5)
    assert access_lines(server, within_s=0) == []
    assert any(line.get("event") == "ready" for line in json_lines(server))
    server.stop()
