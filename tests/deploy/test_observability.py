"""Prometheus and Grafana: promtool on the config, the dashboard's queries against the real metric set."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from service.metrics import Metrics

from .conftest import load_yaml
from .tooling import ROOT, require_tool

PROMETHEUS = ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "effnet-serve.json"

# What the service exports (service/metrics.py, DESIGN.md), as Prometheus series names, with their labels.
HISTOGRAMS = {
    "effnet_request_duration_seconds": ("protocol", "model"),
    "effnet_preprocess_duration_seconds": ("model",),
    "effnet_queue_duration_seconds": ("model",),
    "effnet_inference_duration_seconds": ("model",),
    "effnet_batch_size": ("model",),
    "effnet_model_load_seconds": ("model",),
}
COUNTERS = {
    "effnet_requests_total": ("protocol", "model", "code"),
    "effnet_expired_total": ("model",),
    "effnet_split_engine_calls_total": ("path",),
    "effnet_priority_lane_batches_total": ("model",),
    "effnet_priority_aged_passes_total": ("model",),
    "effnet_model_loads_total": ("model", "version", "outcome"),
    "effnet_model_unloads_total": ("model", "reason"),
    "effnet_route_choices_total": ("policy", "model", "fits"),
    "effnet_cascade_stage_images_total": ("cascade", "stage"),
    "effnet_cascade_escalations_total": ("cascade", "stage"),
    "effnet_cache_lookups_total": ("backend", "model", "result"),
    "effnet_cache_stored_bytes_total": ("backend",),
    "effnet_cache_errors_total": ("backend", "operation"),
    "effnet_load_ratio_seconds_total": ("model",),
}
GAUGES = {
    "effnet_queue_depth": ("model",),
    "effnet_model_ready": ("model",),
    "effnet_model_memory_bytes": ("model", "version"),
    "effnet_queue_depth_by_priority": ("model", "priority"),
    "effnet_cache_bytes": ("backend",),
    "effnet_in_flight_images": ("model",),
    "effnet_load_ratio": ("model",),
    "effnet_pod_load_ratio": (),
}
SERVICE_LABELS: dict[str, tuple[str, ...]] = {
    **COUNTERS,
    **GAUGES,
    **{f"{h}{suffix}": labels for h, labels in HISTOGRAMS.items() for suffix in ("_sum", "_count")},
    **{f"{h}_bucket": (*labels, "le") for h, labels in HISTOGRAMS.items()},
}
SERVICE_SERIES = frozenset(SERVICE_LABELS)
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = ("instance", "job")
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


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names its matcher uses) for each `name{...}` selector in an expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return [
        (name, set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers)))
        for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr)
    ]


def grouping_labels(expr: str) -> set[str]:
    """Labels named in `by (...)`, `without (...)`, `on (...)` and `ignoring (...)` clauses."""
    clauses = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
    return {label.strip() for clause in clauses for label in clause.split(",") if label.strip()}


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


def test_the_metric_list_matches_service_metrics() -> None:
    """The list above is what service/metrics.py registers, names, types and labels alike."""
    metrics = Metrics(process_metrics=False)
    registered: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # prometheus_client keeps a collector's label names only in this attribute.
            registered[value._name] = (value._type, tuple(value._labelnames))
        elif hasattr(value, "collect"):  # a custom collector (the load ratio): its families as scraped
            for family in value.collect():
                registered[family.name] = (family.type, tuple(getattr(family, "_labelnames", ())))
    suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}
    ours = {
        **{n.removesuffix("_total"): ("counter", labels) for n, labels in COUNTERS.items()},
        **{n: ("gauge", labels) for n, labels in GAUGES.items()},
        **{n: ("histogram", labels) for n, labels in HISTOGRAMS.items()},
    }
    assert registered == ours
    assert {f"{n}{suffix[t]}" for n, (t, _) in registered.items()} <= SERVICE_SERIES


def test_dashboard_queries_use_only_labels_the_metrics_have() -> None:
    for expr in queries(dashboard()):
        names = metric_names(expr) & SERVICE_SERIES
        if not names:
            continue
        known = set(TARGET_LABELS).union(*(SERVICE_LABELS[n] for n in names))
        assert grouping_labels(expr) <= known, f"{expr}: groups by {sorted(grouping_labels(expr) - known)}"
        for name, labels in selectors(expr):
            own = set(SERVICE_LABELS.get(name, ())) | set(TARGET_LABELS)
            assert labels <= own, f"{expr}: {name} has no label {sorted(labels - own)}"


def test_dashboard_shows_the_model_lifecycle() -> None:
    joined = "\n".join(queries(dashboard()))
    assert "sum by (model, version, outcome) (effnet_model_loads_total" in joined
    assert 'effnet_model_loads_total{model=~"$model",outcome="failed"}' in joined
    assert "sum by (model, reason) (effnet_model_unloads_total" in joined
    assert 'effnet_model_unloads_total{model=~"$model",reason="evicted"}' in joined
    assert "effnet_model_load_seconds_sum" in joined and "effnet_model_load_seconds_bucket" in joined
    assert "max by (model, version) (effnet_model_memory_bytes" in joined


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


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
    by_model = [e for e in per_model if "instance" not in e]
    assert all("model" in e or "cascade" in e for e in by_model), "per-model breakdowns"


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


def test_label_parsers() -> None:
    expr = 'sum by (model, outcome) (x_total{model=~"$model",outcome="a,b=c"}) / on(instance) y{job!="e"}'
    assert grouping_labels(expr) == {"model", "outcome", "instance"}
    assert selectors(expr) == [("x_total", {"model", "outcome"}), ("y", {"job"})]
