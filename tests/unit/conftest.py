"""Unit-test fixtures: engines on tiny real ONNX models (tests/tiny_model.py), started and stopped
for the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.core.engine import Engine
from service.metrics import Metrics
from tests.tiny_model import tiny_settings, write_model

EngineStarter = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def start_engine() -> AsyncIterator[EngineStarter]:
    """`await start_engine(repository, **settings)`: an engine with its start-up loads done (settings
    as `tiny_settings`, overridable). Every engine started is stopped when the test ends."""
    engines: list[Engine] = []

    async def start(repository: Path, **overrides: Any) -> Engine:
        engine = Engine(tiny_settings(repository, **overrides), Metrics(process_metrics=False))
        engines.append(engine)
        await engine.start()
        await engine.wait_loaded()
        return engine

    yield start
    for engine in engines:
        await engine.stop()


@pytest.fixture
def tiny_repository(tmp_path: Path) -> Path:
    """`tiny` (real weights by its model.json) and `noise` (random weights) at version 1."""
    write_model(tmp_path, "tiny")
    write_model(tmp_path, "noise", weights_kind="random")
    return tmp_path
