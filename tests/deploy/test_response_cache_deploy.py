"""The shared response cache in the deploy files: compose's `redis` service and the replicas' URL to it;
the Kubernetes component (Redis Deployment + Service, EFFNET_CACHE_URL on effnet-serve) rendered by
`kubectl kustomize` and checked against the real Settings (test_k8s.py validates it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from .test_k8s import SHARED_CACHE, container_settings, render


def test_compose_replicas_share_the_redis_service(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:") and redis["image"].split(":")[1][0].isdigit(), "a pinned tag"
    command = redis["command"]
    assert command[0] == "redis-server" and "allkeys-lru" in command
    assert command[command.index("--save") + 1] == "", "a cache: nothing saved to disk"
    assert "6379" in [str(port) for port in redis["expose"]]
    assert "ports" not in redis, "only the replicas reach it"
    for name in ("effnet", "effnet-gpu"):
        url = compose["services"][name]["environment"]["EFFNET_CACHE_URL"]
        default = url.removeprefix("${EFFNET_CACHE_URL-").removesuffix("}")
        parsed = urlparse(default)
        assert parsed.scheme == "redis" and parsed.hostname == "redis" and parsed.port == 6379, url


def test_k8s_component_points_the_replicas_at_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render(SHARED_CACHE)
    deployments = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Deployment"}
    services = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Service"}
    assert set(deployments) == {"effnet-serve", "effnet-cache"}
    (server,) = deployments["effnet-serve"]["spec"]["template"]["spec"]["containers"]
    settings = container_settings(server, monkeypatch)
    assert settings.cache_url is not None
    parsed = urlparse(settings.cache_url)
    service = services[parsed.hostname or ""]
    (port,) = service["spec"]["ports"]
    assert port["port"] == parsed.port
    cache = deployments["effnet-cache"]
    assert service["spec"]["selector"].items() <= cache["spec"]["template"]["metadata"]["labels"].items()
    (redis,) = cache["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in [p["name"] for p in redis["ports"]]
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis["args"][redis["args"].index("--save") + 1] == ""
    assert {"readinessProbe", "livenessProbe"} <= set(redis)
    assert "memory" in redis["resources"]["limits"]
