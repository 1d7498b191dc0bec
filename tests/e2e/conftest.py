"""End-to-end fixtures: the real server as a subprocess on free ports, real exported models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (two asked for one after the other can be the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


ServerFactory = Callable[..., LiveServer]


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start `python -m service serve` with extra CLI args/env; stopped at the end of the session
    (or earlier by the test through `.stop()`)."""
    started: list[LiveServer] = []

    def start(
        repository: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> LiveServer:
        http_port, grpc_port = free_ports(2)
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        command = [
            sys.executable, "-m", "service", "serve",
            "--repository", str(repository),
            "--host", "127.0.0.1",
            "--http-port", str(http_port),
            "--grpc-port", str(grpc_port),
            *args,
        ]  # fmt: skip
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
            )
        server = LiveServer(process, http_port, grpc_port, log_path, list(args))
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server(server_factory: ServerFactory, model_repository: Path) -> LiveServer:
    """The shared server: b0 (random weights) and lite0 (ImageNet weights), default settings."""
    return server_factory(model_repository, "--models", "b0,lite0")


@pytest.fixture(scope="module")
def family_server(
    server_factory: ServerFactory, precision_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> LiveServer:
    """lite0 in fp32, fp16 and int8 (each declaring its accuracy, so `auto` may choose it) and the
    cascade `cascade-small` (lite0-int8, then lite0). One server per test module: their metrics
    start from zero."""
    repository = tmp_path_factory.mktemp("family")
    for name in ("lite0", "lite0-fp16", "lite0-int8"):
        shutil.copytree(precision_repository / name, repository / name)
    (repository / "cascade-small").mkdir()
    cascade = {
        "stages": [{"model": "lite0-int8", "exit_confidence": 0.45}, {"model": "lite0"}],
        "description": "int8 first, fp32 for the unsure",
    }
    (repository / "cascade-small" / "cascade.json").write_text(json.dumps(cascade))
    return server_factory(repository)


def classify(server: LiveServer, body: bytes, **params: object) -> httpx.Response:
    """`POST /classify` with `body` as a JPEG and `params` in the query."""
    return httpx.post(
        f"{server.http_url}/classify",
        params=params,  # type: ignore[arg-type]
        content=body,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )


def copy_model(source: Path, target_repository: Path, name: str, version: int = 1) -> Path:
    """A copy of an exported model version under another name or version number (same graph)."""
    folder = target_repository / name / str(version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = target_repository / f".staging-{name}-{version}"
    shutil.copytree(source, staging)
    spec = json.loads((staging / "model.json").read_text())
    spec.update(name=name, version=version)
    (staging / "model.json").write_text(json.dumps(spec))
    staging.rename(folder)  # appears complete, as the exporter publishes
    return folder
