"""Autoscaling manifests: the base HPA on effnet_load_ratio (prometheus-adapter's rule), the KEDA
alternative, the GPU overlay's HPA and KServe's scale settings. Rendered by `kubectl kustomize`,
validated by kubernetes-validate where a schema exists (KEDA's ScaledObject has none offline: its
structure is checked here), the PromQL checked by promtool, and every metric a query names checked
against what the server really exports."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics
from service.runtime.providers import CPU
from tests.scale.policies import CLAMP_TIMES_TARGET, LOAD_METRIC

from .test_k8s import (
    ADAPTER,
    BASE,
    GPU,
    KEDA,
    KUBERNETES_VERSIONS,
    assert_valid,
    by_kind,
    container_settings,
    kserve_resources,
    kubernetes_quantity,
    only_container,
    render,
)
from .tooling import require_tool

KEDA_GROUP = "keda.sh"
# Knative scales to keep concurrency at this share of the target (container-concurrency-target-percentage).
KNATIVE_TARGET_UTILIZATION = 0.7
B0_GMACS = 0.39


def base_hpa() -> dict[str, Any]:
    return by_kind(render(BASE))["HorizontalPodAutoscaler"]


def metrics_by_type(hpa_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["type"]: m for m in hpa_spec["metrics"]}


def load_target(hpa_spec: dict[str, Any]) -> float:
    return kubernetes_quantity(str(metrics_by_type(hpa_spec)["Pods"]["pods"]["target"]["averageValue"]))


def adapter_rules() -> list[dict[str, Any]]:
    (config_map,) = render(ADAPTER)
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert isinstance(rules, list)
    return rules


def scaled_object() -> dict[str, Any]:
    (found,) = [r for r in render(KEDA) if r["apiVersion"].startswith(f"{KEDA_GROUP}/")]
    return found


def exported_series() -> set[str]:
    """Sample names a replica's /metrics shows once a model has seen a request."""
    metrics = Metrics(process_metrics=False)
    metrics.load.enter("b0", 1, 8)
    metrics.load.leave("b0", 1)
    text = metrics.render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def series_named(expr: str) -> set[str]:
    return set(re.findall(r"\b(effnet_[a-z_]+)\b", expr))


def promtool_accepts(expressions: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    rules = {"groups": [{"name": "autoscaling", "rules": [
        {"record": f"effnet:check_{i}", "expr": expr} for i, expr in enumerate(expressions)
    ]}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def adapter_query(rule: dict[str, Any]) -> str:
    """The adapter's metricsQuery as it sends it for one pod."""
    series = rule["seriesQuery"].split("{")[0]
    query: str = rule["metricsQuery"]
    return (
        query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="default",pod="effnet-serve-0"')
        .replace("<<.GroupBy>>", "namespace,pod")
    )


def cap_of(query: str) -> float:
    """The value a query caps each pod's ratio at (its `clamp_max(..., cap)`, the outermost one per pod)."""
    found = re.search(r"clamp_max\(.*,\s*([0-9.]+)\)", query)
    assert found, f"no clamp_max in {query}"
    return float(found[1])


# ------------------------------------------------------------------------------------------- base HPA
def test_base_hpa_scales_on_the_load_ratio_with_cpu_secondary() -> None:
    spec = base_hpa()["spec"]
    metrics = metrics_by_type(spec)
    assert set(metrics) == {"Pods", "Resource"}
    assert metrics["Pods"]["pods"]["metric"]["name"] == LOAD_METRIC
    assert metrics["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert 0 < load_target(spec) <= 1, "a pod is at its target before every runner slot is taken"
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["averageUtilization"] >= 85, "CPU only as a backstop"
    behavior = spec["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0, "scale up at once"
    assert max(p["periodSeconds"] for p in behavior["scaleUp"]["policies"]) <= 15
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120, "new pods load and warm first"
    assert all(p["type"] != "Percent" or p["value"] < 100 for p in behavior["scaleDown"]["policies"])


def test_the_adapter_serves_the_metric_the_hpa_reads(tmp_path: Path) -> None:
    (rule,) = adapter_rules()
    assert rule["name"]["as"] == LOAD_METRIC
    assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"]), "per-pod values for a Pods metric"
    query = adapter_query(rule)
    assert series_named(query) and series_named(query) <= exported_series(), "it names what replicas export"
    checked = promtool_accepts([query], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "rate(" in query and "max by" in query, "the mean of the busiest model, from the integral"
    cap = CLAMP_TIMES_TARGET * load_target(base_hpa()["spec"])
    assert cap_of(query) == cap, "capped at twice the target, as make scale-sim measured it (docs/deploy.md)"


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    assert (
        promtool_accepts(["max by (pod (rate(effnet_load_ratio_seconds_total[30s]))"], tmp_path).returncode
        != 0
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_adapter_config_map_validates(tmp_path: Path, version: str) -> None:
    resources = render(ADAPTER)
    assert [(r["kind"], r["metadata"]["namespace"]) for r in resources] == [("ConfigMap", "monitoring")]
    assert_valid(resources, tmp_path, "adapter", version)


# ---------------------------------------------------------------------------------------------- GPU
def test_gpu_overlay_scales_on_the_load_ratio_only() -> None:
    spec = by_kind(render(GPU))["HorizontalPodAutoscaler"]["spec"]
    assert [m["type"] for m in spec["metrics"]] == ["Pods"], "never on CPU"
    assert spec["metrics"][0]["pods"]["metric"]["name"] == LOAD_METRIC
    assert load_target(spec) == load_target(base_hpa()["spec"])
    assert spec["behavior"] == base_hpa()["spec"]["behavior"]
    container = only_container(by_kind(render(GPU))["Deployment"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", "one pod per GPU"


# --------------------------------------------------------------------------------------------- KEDA
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_keda_overlay_validates_and_drops_the_base_hpa(tmp_path: Path, version: str) -> None:
    resources = render(KEDA)
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == ["Deployment", "PodDisruptionBudget", "ScaledObject", "Service"], "KEDA owns the HPA"
    native = [r for r in resources if not r["apiVersion"].startswith(f"{KEDA_GROUP}/")]
    assert_valid(native, tmp_path, "keda", version)


def test_scaled_object_matches_the_base_hpa(tmp_path: Path) -> None:
    spec = scaled_object()["spec"]
    hpa = base_hpa()["spec"]
    deployment = by_kind(render(KEDA))["Deployment"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    prometheus = triggers["prometheus"]
    assert prometheus["metricType"] == "AverageValue", "KEDA divides the summed query by the pod count"
    assert float(prometheus["metadata"]["threshold"]) == load_target(hpa)
    query = prometheus["metadata"]["query"]
    assert query.startswith("sum(") and series_named(query) <= exported_series() and series_named(query)
    (rule,) = adapter_rules()
    window = re.search(r"\[(\w+)\]", rule["metricsQuery"])
    assert window and f"[{window[1]}]" in query, "the same window as the adapter's rule"
    assert cap_of(query) == cap_of(adapter_query(rule)), "each pod capped as the adapter caps it"
    checked = promtool_accepts([query], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    cpu = metrics_by_type(hpa)["Resource"]["resource"]["target"]["averageUtilization"]
    assert triggers["cpu"]["metricType"] == "Utilization" and int(triggers["cpu"]["metadata"]["value"]) == cpu
    assert prometheus["metadata"]["serverAddress"].startswith("http")


# ------------------------------------------------------------------------------------------- KServe
@pytest.mark.parametrize("name", ["effnet", "effnet-grpc"])
def test_kserve_scales_on_concurrency_from_the_batch_sizes(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scaleTarget = images the pod runs at once (max batch x instances, the server's own CPU defaults
    for b0-class models) x the HPA's load-ratio target, over Knative's 70 % target utilisation."""
    predictor = kserve_resources("InferenceService")[name]["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    runtime = kserve_resources("ServingRuntime")[predictor["model"]["runtime"]]["spec"]
    (container,) = runtime["containers"]
    settings = container_settings(container, monkeypatch)
    at_once = settings.batch_size_for(CPU, B0_GMACS) * settings.instances_for(CPU, B0_GMACS)
    expected = math.ceil(at_once * load_target(base_hpa()["spec"]) / KNATIVE_TARGET_UTILIZATION)
    assert predictor["scaleTarget"] == expected
