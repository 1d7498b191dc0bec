"""Fixtures for the deployment tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .tooling import ROOT, unavailable


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data = load_yaml(ROOT / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="session")
def deploy_model_repository(request: pytest.FixtureRequest) -> Path:
    """The shared `model_repository` fixture (tests/conftest.py), when the tree has one."""
    try:
        repository = request.getfixturevalue("model_repository")
    except pytest.FixtureLookupError:
        unavailable("no `model_repository` fixture in tests/conftest.py yet")
        raise AssertionError("unreachable") from None
    return Path(repository)
