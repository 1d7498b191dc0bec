"""The scale simulation's report: per policy, latency over time against the objective, errors, pods
over time and the pod-seconds they cost; JSON, a PNG and a markdown table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def windows(records: list[dict[str, Any]], bucket_s: float, end: float) -> list[dict[str, Any]]:
    """Per window of arrival time: offered requests/s, p50 and p99 (ms) of every request sent in it
    (errors and losses included, at the latency they had)."""
    rows = []
    start = 0.0
    while start < end:
        inside = [r for r in records if start <= r["t"] < start + bucket_s]
        latencies = [r["latency"] for r in inside]
        rows.append(
            {
                "t": round(start, 2),
                "rps": round(len(inside) / bucket_s, 1),
                "p50_ms": round(1000 * quantile(latencies, 0.5), 1),
                "p99_ms": round(1000 * quantile(latencies, 0.99), 1),
                "errors": sum(r["outcome"] != "ok" for r in inside),
            }
        )
        start += bucket_s
    return rows


def summarize(results: dict[str, Any], meta: dict[str, Any], bucket_s: float) -> dict[str, Any]:
    objective = meta["objective_p99_ms"]
    factor = meta["compress"]
    policies = {}
    for name, run in results.items():
        records = run["records"]
        ramp_end = meta["profile"][-1][0]
        rows = windows(records, bucket_s, ramp_end)
        met = [w for w in rows if w["rps"] > 0 and w["p99_ms"] <= objective]
        outcomes = Counter(r["outcome"] for r in records)
        details = Counter(r["detail"] for r in records if r["outcome"] != "ok")
        pod_seconds = sum(p["gone"] - p["created"] for p in run["pods"])
        latencies = [r["latency"] for r in records]
        policies[name] = {
            "requests": len(records),
            "ok": outcomes["ok"],
            "errors": outcomes["error"],
            "client_503s": details.get("http 503", 0),
            "lost": outcomes["lost"],
            "wrong": outcomes["wrong"],
            "error_detail": dict(details),
            "upstream_503s_retried_by_nginx": run["upstream_503s"],
            "p50_ms": round(1000 * quantile(latencies, 0.5), 1),
            "p99_ms": round(1000 * quantile(latencies, 0.99), 1),
            "windows_within_objective": f"{len(met)}/{len(rows)}",
            "share_of_ramp_within_objective": round(len(met) / len(rows), 3) if rows else 0.0,
            "requests_within_objective": round(
                sum(r["latency"] * 1000 <= objective for r in records) / max(1, len(records)), 4
            ),
            "pod_seconds": round(pod_seconds, 1),
            "pod_seconds_in_kubernetes_time": round(pod_seconds * factor),
            "peak_pods": max((t["replicas"] for t in run["timeline"]), default=0),
            "pods_created": len(run["pods"]),
            "windows": rows,
            "timeline": run["timeline"],
            "pods": run["pods"],
        }
    return {**meta, "bucket_s": bucket_s, "policies": policies}


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| policy | ramp within objective | requests within objective | p50 ms | p99 ms "
        "| 503s to clients | 503s retried by nginx | lost | peak pods | pod-seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["policies"].items():
        lines.append(
            f"| {name} | {s['share_of_ramp_within_objective']:.0%} ({s['windows_within_objective']}) "
            f"| {s['requests_within_objective']:.1%} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} "
            f"| {s['client_503s']} | {s['upstream_503s_retried_by_nginx']} | {s['lost']} "
            f"| {s['peak_pods']} | {s['pod_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor = summary["compress"]
    figure, (load, latency, pods) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    colours = {"load-ratio": "tab:blue", "cpu-70": "tab:red", "load-ratio-clamped": "tab:green"}
    profile = summary["profile"]
    load.plot(
        [t * factor for t, _ in profile], [r for _, r in profile], color="black", label="offered (profile)"
    )
    for name, s in summary["policies"].items():
        colour = colours.get(name)
        xs = [w["t"] * factor for w in s["windows"]]
        load.plot(xs, [w["rps"] for w in s["windows"]], color=colour, alpha=0.6, label=f"sent ({name})")
        latency.plot(xs, [w["p99_ms"] for w in s["windows"]], color=colour, label=f"p99 {name}")
        latency.plot(
            xs, [w["p50_ms"] for w in s["windows"]], color=colour, linestyle=":", label=f"p50 {name}"
        )
        timeline = s["timeline"]
        pods.step(
            [t["t"] * factor for t in timeline],
            [t["replicas"] for t in timeline],
            where="post",
            color=colour,
            label=f"pods {name}",
        )
        pods.step(
            [t["t"] * factor for t in timeline],
            [t["ready"] for t in timeline],
            where="post",
            color=colour,
            linestyle=":",
            label=f"ready {name}",
        )
    latency.axhline(summary["objective_p99_ms"], color="grey", linestyle="--", label="objective")
    latency.set_yscale("log")
    load.set_ylabel("requests/s")
    latency.set_ylabel("latency ms (log)")
    pods.set_ylabel("pods")
    pods.set_xlabel(f"Kubernetes seconds (run {factor:g}x faster)")
    for axis in (load, latency, pods):
        axis.legend(fontsize=7, loc="upper right")
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"HPA on effnet_load_ratio vs CPU 70 %: pods of {summary['millicores_per_pod']}m, "
        f"one pod {summary['calibration']['capacity_rps']} req/s"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_outputs(summary: dict[str, Any], results: dict[str, Any], report: Path, image: Path) -> str:
    del results  # everything kept is in the summary
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, image)
    return table(summary)
