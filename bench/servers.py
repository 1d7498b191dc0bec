"""Start and stop the servers under test as child processes on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server child process; `with` starts it, waits until `ready_path` answers 200, stops it."""

    def __init__(
        self, argv: list[str], env: dict[str, str], http_port: int, ready_path: str, log: Path
    ) -> None:
        self.argv, self.env, self.http_port, self.ready_path, self.log_path = (
            argv,
            env,
            http_port,
            ready_path,
            log,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env={**os.environ, **self.env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s; see {self.log_path}")

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def batch_histogram(self, model: str) -> dict[str, float]:
        """Cumulative `effnet_batch_size` bucket counts for `model`, keyed by upper bound."""
        text = httpx.get(self.base_url + "/metrics", timeout=5.0).text
        buckets: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "effnet_batch_size":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("model") == model:
                    buckets[sample.labels["le"]] = sample.value
        return buckets


def service(
    repository: Path, models: list[str], settings: dict[str, str], log: Path
) -> tuple[ServerProcess, int]:
    """Our server with `settings` as EFFNET_* variables; returns it and its gRPC port."""
    http_port, grpc_port = free_port(), free_port()
    argv = [
        sys.executable, "-m", "service", "serve", "--repository", str(repository),
        "--models", ",".join(models), "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--host", "127.0.0.1", "--log-level", "WARNING",
    ]  # fmt: skip
    env = {f"EFFNET_{key.upper()}": value for key, value in settings.items()}
    return ServerProcess(argv, env, http_port, "/readyz", log), grpc_port


def _uvicorn_app(factory: str, env: dict[str, str], log: Path) -> ServerProcess:
    """A reference server: an app factory of ours under uvicorn, on a free port."""
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    return ServerProcess(argv, env, port, "/healthz", log)


def naive(model_dir: Path, log: Path, draft: bool = False, threads: int = 0) -> ServerProcess:
    """The naive reference server; `draft`: with JPEG draft decoding ("naive + draft"); `threads`: its
    session's thread count where ORT's default must not be used (a pinned run)."""
    env = {"EFFNET_NAIVE_MODEL_DIR": str(model_dir), "EFFNET_NAIVE_DRAFT": "1" if draft else "0"}
    if threads:
        env["EFFNET_NAIVE_THREADS"] = str(threads)
    return _uvicorn_app("bench.naive_server:create_app", env, log)


def floor(model_dir: Path, log: Path) -> ServerProcess:
    """The overhead-floor reference server (bench/floor_server.py)."""
    return _uvicorn_app("bench.floor_server:create_app", {"EFFNET_FLOOR_MODEL_DIR": str(model_dir)}, log)


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Per-bucket (not cumulative) batch counts between two scrapes, keyed by batch size bound."""

    def key(le: str) -> float:
        return float("inf") if le == "+Inf" else float(le)

    delta: dict[str, int] = {}
    previous = 0.0
    for le in sorted(after, key=key):
        cumulative = after[le] - before.get(le, 0.0)
        count = round(cumulative - previous)
        previous = cumulative
        if count:
            delta[le] = count
    return delta
