"""Several `make scale-sim` reports side by side: per run, the load ratio against CPU 70 % in the same
run (ramp windows within the objective, p99, pod-seconds), then the medians over the runs. One run is
one draw of a noisy machine; pairs from several runs show whether a difference is more than that.

    python -m tests.scale.compare docs/simulations/scale-sim-200m-capped-s*.json
    python -m tests.scale.compare --ours load-ratio docs/simulations/scale-sim-200m-t012-s*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

THEIRS = "cpu-70"


def windows_within(policy: dict[str, Any]) -> int:
    return int(str(policy["windows_within_objective"]).split("/")[0])


def pair(report: dict[str, Any], policy: str = "load-ratio-clamped") -> dict[str, Any]:
    """One run's `policy` and CPU 70 %, side by side."""
    ours, theirs = report["policies"][policy], report["policies"][THEIRS]
    return {
        "target": report["load_ratio_target_used"],
        "capacity_rps": report["calibration"]["capacity_rps"],
        "windows": (windows_within(ours), windows_within(theirs)),
        "of_windows": len(ours["windows"]),
        "p99_ms": (ours["p99_ms"], theirs["p99_ms"]),
        "pod_seconds": (ours["pod_seconds"], theirs["pod_seconds"]),
        "pod_seconds_ratio": round(ours["pod_seconds"] / theirs["pod_seconds"], 3),
        "lost": ours["lost"] + theirs["lost"] + ours["wrong"] + theirs["wrong"],
        "client_503s": ours["client_503s"] + theirs["client_503s"],
    }


def table(named: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| run | target | one pod req/s | windows within, ours / CPU | p99 ms, ours / CPU "
        "| pod-seconds, ours / CPU | ours / CPU's pod-seconds | lost | 503s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in named:
        lines.append(
            f"| {name} | {p['target']} | {p['capacity_rps']} | {p['windows'][0]} / {p['windows'][1]} "
            f"(of {p['of_windows']}) | {p['p99_ms'][0]:.0f} / {p['p99_ms'][1]:.0f} "
            f"| {p['pod_seconds'][0]:.0f} / {p['pod_seconds'][1]:.0f} | {p['pod_seconds_ratio']:.3f} "
            f"| {p['lost']} | {p['client_503s']} |"
        )
    pairs = [p for _, p in named]
    if len(pairs) > 1:
        more_windows = statistics.median(p["windows"][0] - p["windows"][1] for p in pairs)
        p99 = statistics.median(p["p99_ms"][0] / p["p99_ms"][1] for p in pairs)
        cost = statistics.median(p["pod_seconds_ratio"] for p in pairs)
        lines.append(
            f"| median of {len(pairs)} | | | {more_windows:+g} windows for ours | p99 x{p99:.2f} "
            f"| | {cost:.3f} | {sum(p['lost'] for p in pairs)} | {sum(p['client_503s'] for p in pairs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scale.compare", description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--ours", default="load-ratio-clamped", help="the policy set against cpu-70")
    args = parser.parse_args(argv)
    named = [(path.stem, pair(json.loads(path.read_text()), args.ours)) for path in args.reports]
    print(table(named))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
