"""Fixtures for the device check's CPU-side tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import write_model


@pytest.fixture
def tiny_check_repository(tmp_path: Path) -> Path:
    """A repository with tiny real ONNX models under the names the check measures: b0 and b0-fp16."""
    repository = tmp_path / "repository"
    write_model(repository, "b0", weights_kind="random")
    write_model(repository, "b0-fp16", weights_kind="random")
    return repository


@pytest.fixture(autouse=True)
def no_runtime_options(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """check.py's runtime_options phase (a process per variant, seconds each) left out of the flow tests;
    bench/tests/gpu/test_runtime_options.py runs it for real."""
    from bench.gpu import check

    asked: list[str] = []

    def stand_in(model_path: Path, *args: object) -> dict[str, object]:
        asked.append(model_path.parent.parent.name)
        return {}

    monkeypatch.setattr(check, "runtime_options", stand_in)
    return asked
