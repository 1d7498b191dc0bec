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
