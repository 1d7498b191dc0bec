"""Serving the family: the cascade curve, and `auto` against a fixed model under rising load.

    python -m bench.family curve --repository DIR     # bare ORT, real photos: cascade agreement vs cost
    python -m bench.family load --repository DIR      # our server, open loop: fixed lite2 vs auto

`curve` runs each Lite model (fp32 and int8) on the real-photo set in bare ONNX Runtime (one thread),
then computes, for the cascade lite0-int8 -> lite2 at exit thresholds 0.30-0.95, its top-1 agreement
with lite2 and its mean cost (ms per image: stage 1 always, stage 2 for the images it escalates), in
the style of "Wisdom of Committees" (Wang et al., ICLR 2022), Figure 1. The single models are marked
on the same axes. `load` offers rising open-loop load (1080p JPEGs over HTTP) to `variant=lite2` and
to `variant=auto&budget_ms=B`, and records p50/p99 and the models auto chose.

Writes bench/results/family-curve.json|png and family-load.json|png.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.labelled import session as labelled_session
from models.tune import replay
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec
from service.preprocess.images import PreprocessSpec, preprocess

RESULTS = Path(__file__).resolve().parent / "results"
SINGLE_MODELS = ("lite0", "lite0-int8", "lite1", "lite1-int8", "lite2", "lite2-int8")
STAGE_1, STAGE_2 = "lite0-int8", "lite2"
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(14))  # 0.30 .. 0.95
# Photos of things ImageNet knows, shipped with scikit-image, each seen whole and in seven crops/flips.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "clock", "moon", "hubble_deep_field")


# ---------------------------------------------------------------------------------------------- photos
def _views(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]

    def crop(fraction: float, top: float, left: float) -> np.ndarray:
        ch, cw = int(h * fraction), int(w * fraction)
        y, x = int((h - ch) * top), int((w - cw) * left)
        return image[y : y + ch, x : x + cw]

    views = [image, crop(0.9, 0.5, 0.5), crop(0.8, 0.0, 0.0), crop(0.8, 1.0, 1.0), crop(0.75, 0.5, 0.5)]
    return views + [view[:, ::-1] for view in views[:3]]


def photo_jpegs() -> list[bytes]:
    from PIL import Image
    from skimage import data

    jpegs = []
    for name in PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        for view in _views(np.ascontiguousarray(image[..., :3])):
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(view)).save(buffer, format="JPEG", quality=95)
            jpegs.append(buffer.getvalue())
    return jpegs


# ----------------------------------------------------------------------------------------------- curve
def _newest(repository: Path, name: str) -> Path:
    versions = sorted(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit())
    return repository / name / str(versions[-1])


def run_models(repository: Path, names: Sequence[str], jpegs: list[bytes]) -> dict[str, dict[str, Any]]:
    """Each model's probabilities on every photo and its median ms per image (batch 1, one thread)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        folder = _newest(repository, name)
        spec = ModelSpec.from_file(folder / SPEC_FILE)
        session = labelled_session(folder / MODEL_FILE, threads=1)  # int8 as the server runs it here
        pixels = np.stack([preprocess(j, PreprocessSpec.from_model_spec(spec)) for j in jpegs])
        probabilities = np.concatenate(
            [
                session.run(["probabilities"], {"pixels": pixels[i : i + 8]})[0]
                for i in range(0, len(pixels), 8)
            ]
        )
        times = []
        for i in range(3 + 15):
            started = time.perf_counter()
            session.run(["probabilities"], {"pixels": pixels[i % len(pixels)][None]})
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
        out[name] = {"probabilities": probabilities, "ms": statistics.median(times)}
        print(f"{name}: {out[name]['ms']:.1f} ms per image", file=sys.stderr)
    return out


def cascade_curve(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    reference = runs[STAGE_2]["probabilities"].argmax(axis=1)
    first = runs[STAGE_1]["probabilities"]
    second = runs[STAGE_2]["probabilities"]
    cost_1, cost_2 = runs[STAGE_1]["ms"], runs[STAGE_2]["ms"]
    points = []
    for threshold in THRESHOLDS:
        answer, reached = replay([first, second], threshold)  # the same replay as `models.cascade --tune`
        points.append(
            {
                "threshold": threshold,
                "escalation_rate": reached[1],
                "agreement_with_lite2": float((answer == reference).mean()),
                "mean_ms": cost_1 + reached[1] * cost_2,
            }
        )
    singles = {
        name: {
            "agreement_with_lite2": float((run["probabilities"].argmax(axis=1) == reference).mean()),
            "mean_ms": run["ms"],
        }
        for name, run in runs.items()
    }
    return {
        "cascade": f"{STAGE_1} -> {STAGE_2}",
        "images": int(len(reference)),
        "points": points,
        "singles": singles,
    }


def choose_threshold(curve: dict[str, Any], target: float) -> dict[str, Any]:
    """The cheapest threshold whose agreement with lite2 reaches `target`, else the most agreeing one."""
    points = curve["points"]
    good = [p for p in points if p["agreement_with_lite2"] >= target]
    if good:
        return min(good, key=lambda p: p["mean_ms"])
    return max(points, key=lambda p: (p["agreement_with_lite2"], -p["mean_ms"]))


def plot_curve(curve: dict[str, Any], chosen: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = curve["points"]
    ax.plot([p["mean_ms"] for p in points], [100 * p["agreement_with_lite2"] for p in points], "o-",
            label=f"cascade {curve['cascade']}")  # fmt: skip
    for p in points[::2]:
        ax.annotate(f"{p['threshold']:.2f}", (p["mean_ms"], 100 * p["agreement_with_lite2"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
    for name, single in curve["singles"].items():
        marker = "s" if name.endswith("-int8") else "^"
        ax.plot(single["mean_ms"], 100 * single["agreement_with_lite2"], marker, label=name)
    ax.plot(chosen["mean_ms"], 100 * chosen["agreement_with_lite2"], "r*", markersize=14,
            label=f"shipped: exit at {chosen['threshold']:.2f}")  # fmt: skip
    ax.set_xlabel("mean cost, ms per image (bare ORT, 1 thread, this CPU)")
    ax.set_ylabel("top-1 agreement with lite2, %")
    ax.set_title(f"Cascade vs single models on {curve['images']} real-photo views")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve_main(args: argparse.Namespace) -> int:
    jpegs = photo_jpegs()
    runs = run_models(args.repository, SINGLE_MODELS, jpegs)
    curve = cascade_curve(runs)
    chosen = choose_threshold(curve, args.target)
    curve["chosen"] = chosen
    curve["target_agreement"] = args.target
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "family-curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    plot_curve(curve, chosen, args.out / "family-curve.png")
    for p in curve["points"]:
        agree = p["agreement_with_lite2"]
        share = p["escalation_rate"]
        print(f"t={p['threshold']:.2f} escalate {share:.0%} agree {agree:.1%} {p['mean_ms']:.1f} ms")
    print(f"chosen exit_confidence {chosen['threshold']}: {chosen}")
    return 0


# ------------------------------------------------------------------------------------------------ load
class _AutoTarget:
    """HTTP classify that also records which model answered (auto's choices)."""

    def __init__(self, base_url: str, params: dict[str, str], bodies: Sequence[bytes]) -> None:
        self._url = f"{base_url}/classify"
        self._params = params
        self._bodies = list(bodies)
        self.models: Counter[str] = Counter()
        self._session: Any = None

    async def open(self, concurrency: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(concurrency, 1)), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def send(self, index: int) -> str:
        import aiohttp

        try:
            async with self._session.post(
                self._url, params=self._params, data=self._bodies[index % len(self._bodies)],
                headers={"Content-Type": "image/jpeg"},
            ) as response:  # fmt: skip
                body = await response.read()
                if response.status != 200:
                    return str(response.status)
                self.models[json.loads(body)["model"]] += 1
                return "ok"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"error:{type(exc).__name__}"

    async def close(self) -> None:
        await self._session.close()


def load_main(args: argparse.Namespace) -> int:
    from bench.images import FULL_HD, make_jpegs
    from bench.loadgen import LoadSpec, run_load
    from bench.servers import service

    bodies = make_jpegs(FULL_HD)
    rates = [float(r) for r in args.rates.split(",")]
    log = Path("/tmp/effnet-bench-logs/family.log")
    server, _ = service(args.repository, list(SINGLE_MODELS), {"auto_budget_ms": str(args.budget_ms)}, log)
    fixed = [name for name in args.fixed.split(",") if name]
    runs = [(name, {"variant": name}) for name in fixed]
    runs.append(("auto", {"variant": "auto", "budget_ms": str(args.budget_ms)}))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in runs}
    with server:
        for rate in rates:
            for label, params in runs:
                target = _AutoTarget(server.base_url, params, bodies)
                spec = LoadSpec(mode="open", duration_s=args.seconds, warmup_s=2.0, rate=rate)
                result = asyncio.run(run_load(target, spec, server.pid))  # type: ignore[arg-type]
                summary = result.summary
                row = {
                    "rate": rate,
                    **{k: summary.get(k) for k in ("p50_ms", "p99_ms", "throughput", "statuses")},
                }
                row["models"] = dict(target.models)
                results[label].append(row)
                print(f"{label:5s} {rate:5.1f}/s p50 {summary.get('p50_ms') or 0:7.1f} p99 "
                      f"{summary.get('p99_ms') or 0:7.1f} ms {dict(target.models)}")  # fmt: skip
                time.sleep(2.0)
    document = {"budget_ms": args.budget_ms, "seconds": args.seconds, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "family-load.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_load(document, args.out / "family-load.png")
    return 0


def plot_load(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for label, rows in document["results"].items():
        name = f"variant={label}" + (f" (budget {document['budget_ms']:g} ms)" if label == "auto" else "")
        top.plot([r["rate"] for r in rows], [r["p99_ms"] or float("nan") for r in rows], "o-", label=name)
    top.axhline(document["budget_ms"], color="red", linestyle="--", linewidth=1, label="budget")
    top.set_yscale("log")
    top.set_ylabel("p99 latency, ms (open loop)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    rows = document["results"]["auto"]
    names = sorted({m for r in rows for m in r["models"]})
    bottom_values = np.zeros(len(rows))
    for name in names:
        share = np.array([r["models"].get(name, 0) / max(1, sum(r["models"].values())) for r in rows])
        bottom.bar([r["rate"] for r in rows], share, bottom=bottom_values, label=name, width=1.5)
        bottom_values += share
    bottom.set_xlabel("offered load, requests/s (1080p JPEG)")
    bottom.set_ylabel("auto's choices (share)")
    bottom.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.family", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curve = sub.add_parser("curve", help="cascade agreement vs cost on real photos (bare ORT)")
    curve.add_argument("--repository", type=Path, required=True)
    curve.add_argument(
        "--target", type=float, default=0.97, help="agreement with lite2 the threshold must reach"
    )
    curve.add_argument("--out", type=Path, default=RESULTS)
    load = sub.add_parser("load", help="fixed lite2 vs auto under rising open-loop load")
    load.add_argument("--repository", type=Path, required=True)
    load.add_argument("--budget-ms", type=float, default=100.0)
    load.add_argument("--rates", default="4,8,16,24,32,48")
    load.add_argument("--seconds", type=float, default=12.0)
    load.add_argument("--fixed", default="lite2", help="models to load at a fixed name, besides auto")
    load.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    return curve_main(args) if args.command == "curve" else load_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
