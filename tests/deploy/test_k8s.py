"""Kubernetes manifests: schema-valid (kubernetes-validate), and consistent with each other."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import load_yaml
from .tooling import ROOT, require_tool

K8S = ROOT / "docker" / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
# The newest schema the validator ships, and an older release that managed clusters still run.
KUBERNETES_VERSIONS = ("1.37.0", "1.31.0")


def base_resources() -> dict[str, dict[str, Any]]:
    kustomization = load_yaml(BASE / "kustomization.yaml")
    resources = [load_yaml(BASE / name) for name in kustomization["resources"]]
    return {r["kind"]: r for r in resources}


def strategic_merge(base: Any, patch: Any) -> Any:
    """The subset of kustomize's strategic merge these manifests use: maps merge key by key, lists of
    named maps (containers, env, ports) merge by `name`, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in patch)
    ):
        merged_list = [copy.deepcopy(i) for i in base]
        by_name = {i.get("name"): n for n, i in enumerate(merged_list) if isinstance(i, dict)}
        for item in patch:
            if item["name"] in by_name:
                index = by_name[item["name"]]
                merged_list[index] = strategic_merge(merged_list[index], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def gpu_deployment() -> dict[str, Any]:
    kustomization = load_yaml(GPU / "kustomization.yaml")
    assert kustomization["resources"] == ["../../base"]
    patches = [load_yaml(GPU / p["path"]) for p in kustomization["patches"]]
    deployment = base_resources()["Deployment"]
    for patch in patches:
        assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", deployment["metadata"]["name"])
        deployment = strategic_merge(deployment, patch)
    return deployment


def validate(validator: str, paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [validator, "--strict", "--kubernetes-version", version, *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate(tmp_path: Path, version: str) -> None:
    validator = require_tool("kubernetes-validate")
    rendered = tmp_path / "gpu-deployment.yaml"
    rendered.write_text(yaml.safe_dump(gpu_deployment()))
    files = [BASE / name for name in load_yaml(BASE / "kustomization.yaml")["resources"]] + [rendered]
    result = validate(validator, files, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files), result.stdout + result.stderr


def test_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    broken = base_resources()["Deployment"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert validate(validator, [path], KUBERNETES_VERSIONS[0]).returncode != 0


def test_probes_and_grace_period() -> None:
    deployment = base_resources()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    env = {e["name"]: e["value"] for e in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > float(env["EFFNET_DRAIN_TIMEOUT_S"]) + pre_stop
    assert pod["securityContext"]["runAsUser"] == 10001, "matches the image's USER"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp for the runtime"


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    resources = base_resources()
    deployment = resources["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert resources["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in resources["Service"]["spec"]["ports"]} == {"http", "grpc"}
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] > resources["PodDisruptionBudget"]["spec"]["minAvailable"]


def test_gpu_overlay_requests_a_gpu_and_keeps_the_probes() -> None:
    base = base_resources()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    (container,) = gpu_deployment()["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["EFFNET_DEVICE"] == "cuda" and env["EFFNET_MODELS"] == "b0,lite0"
    assert container["readinessProbe"] == base["readinessProbe"]
    assert container["livenessProbe"] == base["livenessProbe"]


def test_strategic_merge_merges_named_lists() -> None:
    base = {"c": [{"name": "a", "x": 1, "env": [{"name": "K", "value": "1"}]}], "keep": 1}
    patch = {"c": [{"name": "a", "env": [{"name": "K", "value": "2"}, {"name": "L", "value": "3"}]}]}
    assert strategic_merge(base, patch) == {
        "c": [{"name": "a", "x": 1, "env": [{"name": "K", "value": "2"}, {"name": "L", "value": "3"}]}],
        "keep": 1,
    }
