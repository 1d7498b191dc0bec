"""yamllint over every YAML file of the deployment."""

from __future__ import annotations

import subprocess

from .tooling import ROOT, require_tool

CONFIG = ROOT / "docker" / "yamllint.yaml"


def test_yamllint_is_clean() -> None:
    yamllint = require_tool("yamllint")
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "docker").rglob("*.y*ml"))]
    assert len(files) >= 10
    result = subprocess.run(
        [yamllint, "--strict", "-c", str(CONFIG), *map(str, files)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
