"""Finding the external validators. A missing tool skips its test under `make test`; under
`make check-deploy` (EFFNET_CHECK_DEPLOY=1), which installs them all, it is a failure."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRICT = os.environ.get("EFFNET_CHECK_DEPLOY") == "1"


def unavailable(reason: str) -> None:
    if STRICT:
        pytest.fail(f"{reason} (EFFNET_CHECK_DEPLOY=1: `make check-deploy` must provide it)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of `name`: first beside this Python (the venv's bin/), then on PATH, then sbin."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin") if (p := Path(d) / name).exists()), None
    )
    if found is None:
        unavailable(f"{name} is not installed")
        raise AssertionError("unreachable")
    return found


def load_docker_helper(name: str) -> ModuleType:
    """Import docker/NAME.py (the folder is no package: the image runs these as plain scripts)."""
    spec = importlib.util.spec_from_file_location(f"effnet_docker_{name}", ROOT / "docker" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
