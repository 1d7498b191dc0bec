"""Robustness fixtures: the e2e subprocess servers, plus an in-process server (engine + HTTP + gRPC in
the test's event loop) on a tiny ONNX model, whose batcher runner a test can swap for a slow or
failing one."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import uvicorn
from PIL import Image

from service.__main__ import _Server
from service.api.grpc.server import create_grpc_server
from service.api.http.app import create_app
from service.core.engine import Engine
from service.metrics import Metrics
from service.runtime.batcher import Batcher, Runner
from service.settings import Settings
from tests.e2e.conftest import LiveServer, ServerFactory, free_port, server_factory  # noqa: F401
from tests.tiny_model import write_model
from tests.waiting import until

TINY = "tiny"


def jpeg(size: tuple[int, int] = (320, 240), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class GatedRunner:
    """Wraps a runner: each batch waits for `gate` (set: no wait) and may raise `fail_next` times."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = 0
        self.batch_sizes: list[int] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batch_sizes.append(len(batch))
        self.entered.set()
        if not self.gate.wait(30):
            raise RuntimeError("test gate never opened")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("injected fault: the runtime blew up")
        return self.inner.run(batch)


@dataclass
class InProcess:
    engine: Engine
    metrics: Metrics
    settings: Settings
    runner: GatedRunner
    http_url: str
    grpc_address: str

    @property
    def batcher(self) -> Batcher:
        batcher = self.engine.ready_version(TINY).batcher
        assert batcher is not None
        return batcher

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from the Prometheus text (0 when absent)."""
        text = self.metrics.render().decode()
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        pattern = rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$"
        for match in re.finditer(pattern, text, re.M):
            found = (match.group(1) or "").strip("{}").split(",")
            if all(label in found for label in wanted):
                return float(match.group(2))
        return 0.0


@pytest.fixture
async def inprocess(tmp_path: Path) -> AsyncIterator[InProcess]:
    """Engine on a tiny model served over HTTP (uvicorn) and gRPC in this event loop."""
    write_model(tmp_path, TINY)
    settings = Settings(
        repository=tmp_path,
        models=TINY,
        host="127.0.0.1",
        http_port=free_port(),
        grpc_port=free_port(),
        warmup_runs=0,
        intra_op_threads=1,
        preprocess_workers=1,
        max_batch_size=4,
        instances=1,  # one batch at a time: the tests hold the runner and count what queues behind it
        max_queue_size=8,
        drain_timeout_s=5,
    )
    metrics = Metrics(process_metrics=False)
    engine = Engine(settings, metrics)
    await engine.start()
    await engine.wait_loaded()
    batcher = engine.ready_version(TINY).batcher
    assert batcher is not None
    runner = GatedRunner(batcher.runner)
    batcher.runner = runner
    config = uvicorn.Config(
        create_app(engine, settings, metrics),
        host="127.0.0.1",
        port=settings.http_port,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    http = _Server(config)
    http_task = asyncio.create_task(http.serve())
    grpc_server = create_grpc_server(engine, settings, metrics)
    await grpc_server.start()
    await until(lambda: http.started, what="uvicorn to start")
    try:
        yield InProcess(
            engine,
            metrics,
            settings,
            runner,
            f"http://127.0.0.1:{settings.http_port}",
            f"127.0.0.1:{settings.grpc_port}",
        )
    finally:
        runner.gate.set()
        http.should_exit = True
        await asyncio.gather(http_task, grpc_server.stop(0), return_exceptions=True)
        await engine.stop()


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss
