"""PNG charts from a results dict (bench/results/<profile>.json): `python -m bench.plots FILE.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from bench.figures import PAPER_TOP1, _default_service, select  # noqa: E402

DPI = 80


def _save(fig: Any, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def throughput_vs_concurrency(result: dict[str, Any], out: Path, prefix: str) -> Path:
    runs, ref = result["runs"], result["references"]["b0"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [
        (
            "service HTTP /classify",
            _default_service(runs, model="b0", protocol="http", input="1080p", mode="closed"),
        ),
        ("service gRPC Classify", _default_service(runs, model="b0", protocol="grpc", mode="closed")),
        ("service V2 gRPC pixels", _default_service(runs, model="b0", protocol="v2-pixels", mode="closed")),
        (
            "service V2 pixels on streams",
            _default_service(runs, model="b0", protocol="v2-stream-pixels", mode="closed"),
        ),
        ("naive FastAPI + ORT", select(runs, server="naive", model="b0", mode="closed")),
    ]
    for label, rows in series:
        rows = sorted(rows, key=lambda r: r["concurrency"])
        if rows:
            ax.plot([r["concurrency"] for r in rows], [r["throughput"] for r in rows], "o-", label=label)
    if "pipeline_limit_1080p_cpu" in ref:
        ax.axhline(
            ref["pipeline_limit_1080p_cpu"], ls="-.", c="k", label="pipeline limit from CPU time (quiet)"
        )
    ax.axhline(ref["pipeline_limit_1080p"], ls="--", c="k", label="pipeline limit (1080p JPEG)")
    ax.axhline(0.85 * ref["pipeline_limit_1080p"], ls=":", c="k", label="0.85 x pipeline limit")
    ax.axhline(ref["bare_ort"]["best_images_per_s"], ls="--", c="grey", label="bare ORT, ready batches")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("images/s")
    ax.set_title("B0, 1920x1080 JPEG bodies (V2 pixels: preprocessed by the client)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, f"{prefix}-throughput-vs-concurrency")


def latency_vs_load(result: dict[str, Any], out: Path, prefix: str) -> Path:
    rows = sorted(
        _default_service(result["runs"], model="b0", protocol="http", mode="open"), key=lambda r: r["rate"]
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
        points = [(r["rate"], r[f"{p}_ms"]) for r in rows if r[f"{p}_ms"] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=p)
    achieved = [(r["rate"], r["throughput"]) for r in rows]
    if achieved:
        twin = ax.twinx()
        twin.plot(*zip(*achieved, strict=True), "k:", label="answered images/s")
        twin.set_ylabel("answered images/s (dotted)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("offered load, requests/s (open loop, fixed rate)")
    ax.set_ylabel("latency ms (from the due time)")
    ax.set_title("B0 HTTP /classify, 1080p JPEG: latency vs offered load")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, out, f"{prefix}-latency-vs-load")


def batch_sizes(result: dict[str, Any], out: Path, prefix: str) -> Path:
    sweep = _default_service(result["runs"], model="b0", protocol="http", input="1080p", mode="closed")
    rows = sorted([r for r in sweep if r.get("batch_sizes")], key=lambda r: r["concurrency"])
    sizes = sorted({float(k) for r in rows for k in r["batch_sizes"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        total = sum(r["batch_sizes"].values())
        shares = [r["batch_sizes"].get(_le(s), 0) / total for s in sizes]
        ax.bar([j + i * width for j in range(len(sizes))], shares, width, label=f"c={r['concurrency']}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"{s:g}" for s in sizes])
    ax.set_xlabel("batch size (histogram bucket upper bound)")
    ax.set_ylabel("share of executed batches")
    ax.set_title("B0 batch sizes formed by the dynamic batcher (default settings)")
    ax.legend(fontsize=8)
    return _save(fig, out, f"{prefix}-batch-sizes")


def _le(size: float) -> str:
    return "+Inf" if size == float("inf") else f"{size:.1f}"


def paper_chart(result: dict[str, Any], out: Path, prefix: str) -> Path | None:
    chart = {r["model"]: r for r in select(result["runs"], chart=True)}
    refs = result["references"]
    if not chart:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = [m for m in PAPER_TOP1 if m in chart]
    ax.plot([chart[m]["throughput"] for m in models], [PAPER_TOP1[m] for m in models], "o-", c="C3",
            label="service, HTTP 1080p JPEG, 8 clients (4 from B4)")  # fmt: skip
    bare = [m for m in PAPER_TOP1 if m in refs and "1" in refs[m]["bare_ort"]["batches"]]
    bare_rate = [refs[m]["bare_ort"]["batches"]["1"]["images_per_s"] for m in bare]
    ax.plot(
        bare_rate, [PAPER_TOP1[m] for m in bare], "s--", c="grey", label="bare ORT, batch 1, ready pixels"
    )
    for m in models:
        ax.annotate(
            m.upper(), (chart[m]["throughput"], PAPER_TOP1[m]), textcoords="offset points", xytext=(5, -10)
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("images/s on this machine (log)")
    ax.set_ylabel("ImageNet top-1 % (paper, Table 2)")
    ax.set_title("EfficientNet B0-B7: accuracy vs measured throughput (cf. paper Fig. 1)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, f"{prefix}-paper-chart")


def tuning(result: dict[str, Any], out: Path, prefix: str) -> Path | None:
    trials = result["figures"].get("tuning_b0") or []
    if not trials:
        return None
    labels = [",\n".join(f"{k}={v}" for k, v in t["settings"].items()) or t["trial"] for t in trials]
    colours = ["grey" if not t["settings"] else "C0" for t in trials]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(10, 0.5 * len(trials) + 1.5))
    left.barh(labels, [t["images_per_s"] for t in trials], color=colours)
    left.invert_yaxis()
    left.set_xlabel("images/s")
    right.barh(labels, [t.get("images_per_server_core") or 0.0 for t in trials], color=colours)
    right.set_xlabel("images/s per core the server used (robust to other jobs)")
    fig.suptitle("B0, HTTP 1080p JPEG, 16 clients: one setting changed at a time from the defaults")
    return _save(fig, out, f"{prefix}-tuning")


def plot_all(result: dict[str, Any], out: Path, prefix: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [
        throughput_vs_concurrency(result, out, prefix),
        latency_vs_load(result, out, prefix),
        batch_sizes(result, out, prefix),
        paper_chart(result, out, prefix),
        tuning(result, out, prefix),
    ]
    return [p for p in made if p is not None]


if __name__ == "__main__":
    source = Path(sys.argv[1])
    for png in plot_all(json.loads(source.read_text()), source.parent, source.stem):
        print(png)
