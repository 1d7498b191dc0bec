"""docker-compose.yml: valid for docker-compose (`config -q`), and the topology it describes."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from .tooling import ROOT, require_tool

DRAIN_DEFAULT_S = 30.0


def compose_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    docker_compose = require_tool("docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EFFNET_", "COMPOSE_", "LB_"))}
    return subprocess.run(
        [docker_compose, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, timeout=60, check=False, env={**clean, **(env or {})},
    )  # fmt: skip


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_is_valid(profile: str | None) -> None:
    args = ["--profile", profile] if profile else []
    result = compose_config(*args, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_replicas_are_configurable() -> None:
    result = compose_config("config", env={"EFFNET_REPLICAS": "3"})
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["effnet"]["deploy"]["replicas"] == 3
    assert "profiles" not in rendered["services"]["effnet"], "plain `docker compose up` starts CPU replicas"
    assert rendered["services"]["effnet-gpu"]["profiles"] == ["gpu"]
    gpu = yaml.safe_load(compose_config("--profile", "gpu", "config").stdout)["services"]["effnet-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"


@pytest.mark.parametrize("name", ["effnet", "effnet-gpu"])
def test_replica_service(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    drain_default = float(service["environment"]["EFFNET_DRAIN_TIMEOUT_S"].split(":-")[-1].rstrip("}"))
    assert seconds(service["stop_grace_period"]) > drain_default
    assert seconds(service["stop_grace_period"]) > DRAIN_DEFAULT_S
    assert "healthcheck.py" in " ".join(service["healthcheck"]["test"])
    (volume,) = service["volumes"]
    assert volume.endswith(":/models:ro"), "the model repository is mounted read-only"
    assert service["environment"]["EFFNET_REPOSITORY"] == "/models"
    assert service["build"]["args"]["FLAVOR"] == {"effnet": "cpu", "effnet-gpu": "gpu"}[name]
    assert "effnet-replica" in service["networks"]["default"]["aliases"]
    assert "ports" not in service, "replicas are reached through the load balancer only"


def test_side_services_mount_the_repo_configs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {v.split(":")[0] for s in ("lb", "prometheus", "grafana") for v in services[s]["volumes"]}
    expected = (
        "./docker/nginx/nginx.conf", "./docker/nginx/upstreams.conf", "./docker/prometheus/prometheus.yml",
        "./docker/grafana/provisioning", "./docker/grafana/dashboards",
    )  # fmt: skip
    for path in expected:
        assert path in mounts
        assert (ROOT / path).exists()
    lb_ports = {p.split(":")[-1] for p in services["lb"]["ports"]}
    assert lb_ports == {"8000", "8001"}
    assert services["lb"]["depends_on"] == ["effnet"]
