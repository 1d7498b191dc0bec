"""Run a benchmark profile end to end and write bench/results/<profile>.json (+ plots).

    python -m bench.run --profile quick|full [--repository DIR] [--out bench/results]

Order: references first (nothing else of ours running), then our service, then the naive server,
each on its own free ports. Every figure in the JSON comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.explain import explain_cost
from bench.harness import PACKAGES, ROOT, Bench
from bench.pinning import Pinning
from bench.profiles import ALL_VARIANTS, PROFILES

log = logging.getLogger("bench")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpu": model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit.stdout.strip(),
        "load_average_at_start": list(psutil.getloadavg()),
        # Cores busy over one second before the run (others' jobs on a shared machine).
        "busy_cores_at_start": round(psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1), 2),
    }


def ensure_models(repository: Path, models: list[str]) -> None:
    missing = [m for m in models if not (repository / m).is_dir()]
    if missing:
        log.warning(
            "exporting missing models %s into %s with RANDOM weights (speed only)", missing, repository
        )
        subprocess.run(
            [sys.executable, "-m", "models.export", "--variant", ",".join(missing), "--repository",
             str(repository), "--weights", "random"],
            cwd=ROOT, check=True,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--server-cpus",
        default="",
        help="run the references and every server on these cores (e.g. 0-1) and the load generator on "
        "the others, so the client does not share the server's cores (bench/pinning.py)",
    )
    parser.add_argument("--client-cpus", default="", help="the load generator's cores (default: the rest)")
    args = parser.parse_args(argv)
    if args.client_cpus and not args.server_cpus:
        parser.error("--client-cpus needs --server-cpus")
    try:
        pinning = Pinning.split(args.server_cpus, args.client_cpus) if args.server_cpus else None
    except ValueError as error:
        parser.error(str(error))
    if pinning:
        pinning.hold_server_cores()
    # SIGTERM unwinds like Ctrl-C, so the `with` blocks stop the servers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    needed = ["b0", *(v for v, *_ in profile.variants)]
    if profile.paper_chart:
        needed = list(ALL_VARIANTS)
    ensure_models(args.repository, needed)
    started = time.time()
    bench = Bench(profile, args.repository.resolve(), args.out, pinning)
    meta: dict[str, Any] = {
        "profile": profile.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "pinning": pinning.describe() if pinning else None,
        "versions": _versions(),
        "repository": str(args.repository),
    }
    bench.references("b0", profile.batch_sizes)
    for model, *_ in profile.variants:
        bench.references(model, tuple(b for b in profile.batch_sizes if b <= (2 if model >= "b5" else 4)))
    if profile.paper_chart:
        bench.chart_references()
    bench.service_b0()

    explain = explain_cost(bench)
    log.info("explain outputs: %s", json.dumps(explain, indent=1))
    bench.naive("b0", profile.naive_concurrency)
    bench.naive("b0", profile.naive_concurrency, draft=True)
    bench.floor("b0", (profile.saturation_concurrency,))
    bench.tuning()
    bench.variants()
    meta["duration_s"] = round(time.time() - started, 1)
    meta["images"] = {
        "1080p": {
            "count": len(bench.full_hd),
            "mean_bytes": sum(map(len, bench.full_hd)) // len(bench.full_hd),
        }
    }
    from bench.figures import figures

    result = {"meta": meta, "references": bench.refs, "runs": bench.runs, "explain": explain}
    result["figures"] = figures(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{profile.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s (%.0f s)", path, meta["duration_s"])
    log.info("figures: %s", json.dumps(result["figures"], indent=1))
    if not args.no_plots:
        from bench.plots import plot_all

        for png in plot_all(result, args.out, profile.name):
            log.info("wrote %s", png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
