"""Prometheus and Grafana: promtool on the config, the dashboard's queries against the real metric set."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import load_yaml
from .tooling import ROOT, require_tool

PROMETHEUS = ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "effnet-serve.json"

# What the service exports (service/metrics.py, DESIGN.md), as Prometheus series names.
HISTOGRAMS = (
    "effnet_request_duration_seconds", "effnet_preprocess_duration_seconds", "effnet_queue_duration_seconds",
    "effnet_inference_duration_seconds", "effnet_batch_size",
)  # fmt: skip
SERVICE_SERIES = frozenset(
    {"effnet_requests_total", "effnet_queue_depth", "effnet_model_ready"}
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# prometheus_client's process collector, and `up`, which Prometheus itself writes for every target.
PROCESS_SERIES = frozenset(
    {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }  # fmt: skip
)
PROMETHEUS_SERIES = frozenset({"up"})

PROMQL_WORDS = frozenset(
    {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
     "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
     "rate", "irate", "increase", "delta", "idelta", "histogram_quantile", "label_values", "abs", "clamp_min",
     "clamp_max", "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "time", "vector",
     "scalar", "absent", "changes", "resets", "round", "ceil", "floor", "sort", "sort_desc",
     "le", "inf", "nan"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (identifiers that are not functions, keywords, labels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, [$__rate_interval]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"label_values\(([^,()]+),\s*\w+\)", r"\1", expr)  # Grafana's label_values(metric, label)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def queries(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for variable in data.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_promtool_accepts_the_config() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS.read_text().replace("type: A", "type: AAAAA"))
    result = subprocess.run([promtool, "check", "config", str(broken)], capture_output=True, timeout=60)
    assert result.returncode != 0


def test_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "effnet"]
    (sd,) = job["dns_sd_configs"]
    aliases = compose["services"]["effnet"]["networks"]["default"]["aliases"]
    assert sd["names"] == aliases == compose["services"]["effnet-gpu"]["networks"]["default"]["aliases"]
    assert (sd["type"], sd["port"], job.get("metrics_path", "/metrics")) == ("A", 8000, "/metrics")


def test_dashboard_queries_name_only_exported_metrics() -> None:
    used = set().union(*(metric_names(q) for q in queries(dashboard())))
    unknown = used - SERVICE_SERIES - PROCESS_SERIES - PROMETHEUS_SERIES
    assert not unknown, f"dashboard queries name metrics nobody exports: {sorted(unknown)}"
    assert {n for n in used if n.startswith("effnet_")}, "the parser found no service metric at all"


def test_dashboard_covers_the_issue_list() -> None:
    exprs = queries(dashboard())
    joined = "\n".join(exprs)
    assert "rate(effnet_requests_total" in joined, "request rate"
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, model) (rate(effnet_request_duration_seconds_bucket"
            in joined
        )
    assert "effnet_queue_depth" in joined
    assert "effnet_batch_size_bucket" in joined and "effnet_batch_size_sum" in joined
    assert re.search(r'effnet_requests_total\{[^}]*code!~"[^"]+"', joined), "errors"
    per_model = [e for e in exprs if "effnet_" in e and "by (" in e]
    assert all("model" in e for e in per_model if "instance" not in e), "per-model breakdowns"


def test_dashboard_uses_the_provisioned_datasource(compose: dict[str, Any]) -> None:
    data = dashboard()
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    uids = {p["datasource"]["uid"] for p in data["panels"]} | {
        t["datasource"]["uid"] for p in data["panels"] for t in p["targets"]
    }
    assert uids == {source["uid"]}
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # The provider's path is where compose mounts the dashboards folder.
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "effnet.yml")["providers"]
    mount = next(
        v for v in compose["services"]["grafana"]["volumes"] if v.startswith("./docker/grafana/dashboards:")
    )
    assert mount.split(":")[1] == provider["options"]["path"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(effnet_requests_total{code!~"2..|OK"}[5m]))', {"effnet_requests_total"}),
        ("histogram_quantile(0.99, sum by (le, model) (rate(x_bucket[$__rate_interval])))", {"x_bucket"}),
        ("a / on(instance) group_left b", {"a", "b"}),
        ("label_values(effnet_model_ready, model)", {"effnet_model_ready"}),
    ],
)
def test_metric_name_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
