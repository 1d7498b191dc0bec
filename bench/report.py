"""Markdown tables from a results file, for bench/README.md: `python -m bench.report FILE.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.figures import _default_service, select


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def references(result: dict[str, Any]) -> list[str]:
    lines = [
        "| model | preprocess 1080p ms (1 thread) | inference core ms/img (1 thread, best batch) "
        "| pipeline limit img/s | same from CPU time | bare ORT best img/s (batch) | bare ORT bs1 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, ref in result["references"].items():
        bare = ref["bare_ort"]
        bs1 = bare["batches"].get("1", {}).get("ms_per_batch")
        if "pipeline_limit_1080p" in ref:
            lines.append(
                f"| {model} | {_f(ref['preprocess_1080p']['ms'], 2)} | {_f(ref['inference_core_ms'], 2)} "
                f"| {_f(ref['pipeline_limit_1080p'])} | {_f(ref.get('pipeline_limit_1080p_cpu'))} "
                f"| {_f(bare['best_images_per_s'])} "
                f"({bare['best_batch']}) | {_f(bs1, 2)} |"
            )
        else:
            lines.append(f"| {model} | - | - | - | - | - | {_f(bs1, 2)} |")
    return lines


def efficiency(result: dict[str, Any]) -> list[str]:
    lines = [
        "| model | service img/s (clients) | pipeline limit | efficiency | measured pipeline (of limit) "
        "| service / measured | CPU ms/img: essential / server "
        "| CPU efficiency | server cores | other cores | speedup vs naive, same clients |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speedups = result["figures"].get("speedup_vs_naive", {})
    for model, e in result["figures"].get("efficiency", {}).items():
        speed = ", ".join(f"c={c}: {v}" for c, v in speedups.get(model, {}).items() if c != "peak_vs_peak")
        cpu_ms = f"{_f(e.get('essential_cpu_ms_per_image'))} / {_f(e.get('server_cpu_ms_per_image'))}"
        head = (
            f"| {model} | {_f(e['service_images_per_s'])} ({e['at_concurrency']}) | {_f(e['pipeline_limit'])}"
        )
        measured = f"{_f(e.get('pipeline_measured'))} ({_f(e.get('pipeline_measured_over_limit'), 2)})"
        of_measured = _f(e.get("efficiency_vs_measured_pipeline"), 2)
        lines.append(
            f"{head} | {_f(e['efficiency'], 2)} | {measured} | {of_measured} "
            f"| {cpu_ms} | {_f(e.get('cpu_efficiency'), 2)} "
            f"| {_f(e.get('server_cores'), 2)} | {_f(e['other_cores'], 2)} | {speed or '-'} |"
        )
    return lines


def runs_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | model | protocol | input | load | img/s | p50 ms | p99 ms | non-ok "
        "| client cores | server cores | server CPU ms/img | other cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:.0f}/s"
        bad = {k: v for k, v in r["statuses"].items() if k != "ok"} or ""
        cpu = r["cpu"]
        cpu_ms = cpu["server"] * 1000 / r["throughput"] if cpu["server"] and r["throughput"] else None
        lines.append(
            f"| {r['server']} | {r['model']} | {r['protocol']} | {r['input']} | {load} "
            f"| {_f(r['throughput'])} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {bad} "
            f"| {_f(cpu['client'], 2)} | {_f(cpu['server'], 2)} | {_f(cpu_ms)} | {_f(cpu['other'], 2)} |"
        )
    return lines


def tuning(result: dict[str, Any]) -> list[str]:
    lines = [
        "| trial | settings | img/s | vs baseline mean | img/s per server core | per core vs baseline "
        "| p50 ms | p99 ms | server cores | batch sizes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["figures"].get("tuning_b0", []):
        settings = ", ".join(f"{k}={v}" for k, v in t["settings"].items()) or "defaults"
        lines.append(
            f"| {t['trial']} | {settings} | {_f(t['images_per_s'])} | {_f(t['vs_baseline'], 2)} "
            f"| {_f(t.get('images_per_server_core'))} | {_f(t.get('per_core_vs_baseline'), 2)} "
            f"| {_f(t['p50_ms'])} | {_f(t['p99_ms'])} | {_f(t['server_cores'], 2)} | {t['batch_sizes']} |"
        )
    return lines


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]
    meta = result["meta"]
    out = [
        f"Profile `{meta['profile']}`, {meta['started']}, {meta['machine']['cpu']} "
        f"x{meta['machine']['cores']}, commit {meta['machine']['git_commit']}, {meta['duration_s']:.0f} s; "
        "busy cores before start: "
        f"{meta['machine'].get('busy_cores_at_start')}; median other-load during runs: "
        f"{result['figures'].get('other_cores_median')} cores."
        + (
            f" Pinned: references and servers on cores {pinned['server_cpus']}, the load generator on "
            f"{pinned['client_cpus']}; limits are for {pinned['server_cpus']}."
            if (pinned := meta.get("pinning"))
            else ""
        ),
        "",
        "### References",
        *references(result),
        "",
        "### Efficiency at saturation (HTTP /classify, 1080p JPEG)",
        *efficiency(result),
        "",
        "### Other figures",
        "```json",
        json.dumps(
            {k: v for k, v in result["figures"].items() if k not in ("tuning_b0", "efficiency")}, indent=1
        ),
        "```",
        "",
        "### Service, naive and overhead-floor server runs (default settings)",
        *runs_table(_default_service(runs) + select(runs, server="naive") + select(runs, server="floor")),
        "",
        "### Tuning (B0, HTTP, 1080p JPEG, saturated)",
        *tuning(result),
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))
