"""The GPU device check's measurements (bench/gpu/run.sh calls this; see bench/gpu/README.md).

Phases, each within what is left of one time budget (a phase that does not fit is recorded as
skipped, and gpu.json is rewritten after every phase, so a run cut short still reports):
1. bare ONNX Runtime (CUDA) per model at batch 1..256: the reference;
2. GPU memory over a random sequence of batch sizes after warm-up, through the service's runtime
   (buckets, IO binding): must stay flat;
3. the service at saturation, one server per decoder (Pillow, then nvImageCodec): HTTP /classify
   with 1080p JPEGs, then V2 gRPC with `pixels` and with `image`; images/s, latency, server cores.
`--dry-run` runs the same on the CPU provider with small settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench.gpu")


@dataclass(frozen=True)
class Profile:
    device: str  # "cuda" or "cpu"
    variants: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    bare_budget_s: float  # per batch size
    load_s: float
    warmup_s: float
    concurrency: int  # per client process
    client_processes: int
    memory_steps: int
    budget_s: float


PROFILES = {
    "gpu": Profile(
        device="cuda",
        variants=("b0", "b3", "b7"),
        precisions=("fp32", "fp16"),
        batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        bare_budget_s=0.6,
        load_s=3.0,
        warmup_s=1.0,
        concurrency=32,
        client_processes=4,
        memory_steps=150,
        budget_s=300.0,
    ),
    "dry": Profile(
        device="cpu",
        variants=("b0",),
        precisions=("fp32", "fp16"),
        batch_sizes=(1, 2, 4),
        bare_budget_s=0.1,
        load_s=1.0,
        warmup_s=0.3,
        concurrency=2,
        client_processes=1,
        memory_steps=12,
        budget_s=150.0,
    ),
}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def model_name(variant: str, precision: str) -> str:
    return variant if precision == "fp32" else f"{variant}-{precision}"


def gpu_memory_used_mib() -> float | None:
    """Memory in use on GPU 0 (all processes; this check is the only user), from nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    try:
        return float(out.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None


def environment(profile: Profile) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "cpu_cores": os.cpu_count(),
        "profile": asdict(profile),
    }
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        info["gpu"] = out.stdout.strip()
    for module in ("cupy", "nvidia.nvimgcodec"):
        try:
            __import__(module)
            info[f"{module}_imports"] = True
        except Exception as exc:  # recorded, not fatal: the check reports what it could not use
            info[f"{module}_imports"] = f"no: {exc}"
    return info


# --------------------------------------------------------------------------- 1. bare ORT


def bare_ort(model_path: Path, crop: int, profile: Profile, budget: Budget) -> dict[str, Any]:
    import onnxruntime as ort

    from bench.stats import median

    providers: list[Any] = ["CPUExecutionProvider"]
    if profile.device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    result: dict[str, Any] = {"provider": session.get_providers()[0], "batches": {}}
    rng = np.random.default_rng(0)
    for size in profile.batch_sizes:
        if budget.left() < 5:
            result["batches"][str(size)] = "skipped: time"
            continue
        batch = rng.integers(0, 256, (size, 3, crop, crop), dtype=np.uint8)
        try:
            for _ in range(2):
                session.run(["probabilities"], {"pixels": batch})
            times: list[float] = []
            end = time.perf_counter() + profile.bare_budget_s
            while len(times) < 3 or time.perf_counter() < end:
                start = time.perf_counter()
                session.run(["probabilities"], {"pixels": batch})
                times.append(time.perf_counter() - start)
        except Exception as exc:  # out of memory at the largest batches is a result, not a crash
            result["batches"][str(size)] = f"failed: {str(exc)[:200]}"
            break
        ms = median(times) * 1000
        result["batches"][str(size)] = {
            "ms_per_batch": ms,
            "images_per_s": size * 1000 / ms,
            "runs": len(times),
        }
    measured = {k: v for k, v in result["batches"].items() if isinstance(v, dict)}
    if measured:
        best = max(measured.items(), key=lambda kv: kv[1]["images_per_s"])
        result["best_batch"], result["best_images_per_s"] = int(best[0]), best[1]["images_per_s"]
    return result


# --------------------------------------------------------------------------- 2. memory


def memory_flat(model_path: Path, crop: int, gmacs: float, profile: Profile) -> dict[str, Any]:
    """Warm the service's runtime as the engine does, then random batch sizes: memory before/after."""
    import psutil

    from service.runtime.session import OrtRunner, RuntimeOptions, warmup_batch_sizes
    from service.settings import Settings

    # Buckets and IO binding are what CUDA gets by default; asked for explicitly so the dry run on
    # the CPU provider goes the same way.
    settings = Settings(device=profile.device, batch_buckets="on", io_binding="on")
    runner = OrtRunner(model_path, RuntimeOptions.from_settings(settings), ["logits", "probabilities"])
    max_batch = settings.batch_size_for(runner.provider, gmacs)
    runner.warm_up((3, crop, crop), warmup_batch_sizes(max_batch), runs=2)
    process = psutil.Process()
    rng = random.Random(0)
    rows = np.random.default_rng(0).integers(0, 256, (max_batch, 3, crop, crop), dtype=np.uint8)
    samples: list[dict[str, float | None]] = []
    for step in range(profile.memory_steps):
        n = rng.randint(1, max_batch)
        runner.run_items(list(rows[:n]))
        if step % max(1, profile.memory_steps // 10) == 0 or step == profile.memory_steps - 1:
            samples.append(
                {"step": step, "gpu_mib": gpu_memory_used_mib(), "rss_mib": process.memory_info().rss / 2**20}
            )
    first, last = samples[0], samples[-1]
    key = "gpu_mib" if first["gpu_mib"] is not None else "rss_mib"
    growth = (last[key] or 0.0) - (first[key] or 0.0)
    return {
        "provider": runner.provider,
        "buckets": runner.buckets,
        "io_binding": runner.use_io_binding,
        "max_batch": max_batch,
        "steps": profile.memory_steps,
        "measured": key,
        "samples": samples,
        "growth_mib": growth,
        "flat": abs(growth) <= 64.0,
    }


# --------------------------------------------------------------------------- 3. the service


def _client(
    kind: str, address: str, model: str, payloads: list[Any], spec: dict[str, Any], pid: int
) -> dict[str, Any]:
    """One load-generator process (several run at once: one asyncio client cannot saturate a GPU)."""
    from bench.loadgen import LoadSpec, run_load
    from bench.targets import HttpClassify, Target, V2Infer, v2_image_request, v2_pixels_request

    target: Target
    if kind == "http":
        target = HttpClassify(address, model, payloads)
    elif kind == "v2_pixels":
        target = V2Infer(address, [v2_pixels_request(model, p) for p in payloads], kind)
    else:
        target = V2Infer(address, [v2_image_request(model, b) for b in payloads], kind)
    result = asyncio.run(run_load(target, LoadSpec(**spec), server_pid=pid))
    return {"summary": result.summary, "cpu": result.cpu.as_dict()}


def saturate(
    kind: str, address: str, model: str, payloads: list[Any], profile: Profile, pid: int
) -> dict[str, Any]:
    spec = {
        "mode": "closed",
        "duration_s": profile.load_s,
        "warmup_s": profile.warmup_s,
        "concurrency": profile.concurrency,
    }
    context = multiprocessing.get_context("spawn")
    with context.Pool(profile.client_processes) as pool:
        parts = pool.starmap(
            _client, [(kind, address, model, payloads, spec, pid)] * profile.client_processes
        )
    summaries = [p["summary"] for p in parts]
    ok = sum(s["ok"] for s in summaries)
    return {
        "clients": profile.client_processes * profile.concurrency,
        "images_per_s": sum(s["throughput"] for s in summaries),
        "ok": ok,
        "statuses": [s["statuses"] for s in summaries],
        "p50_ms": float(np.median([s["p50_ms"] for s in summaries if s["p50_ms"] is not None] or [np.nan])),
        "p99_ms": max((s["p99_ms"] for s in summaries if s["p99_ms"] is not None), default=None),
        "server_cores": parts[0]["cpu"].get("server"),  # cores the server process tree used
        "client_cores": sum(p["cpu"].get("client") or 0.0 for p in parts),
        "machine_cores": parts[0]["cpu"].get("machine"),
    }


def service_runs(
    repository: Path,
    models: list[str],
    decoder: str,
    profile: Profile,
    budget: Budget,
    out: Path,
    protocols: list[str],
) -> dict[str, Any]:
    from bench.images import FULL_HD, make_jpegs
    from bench.servers import service
    from service.model_spec import ModelSpec
    from service.preprocess.images import PreprocessSpec, preprocess

    jpegs = make_jpegs(FULL_HD, count=4)
    settings = {
        "device": profile.device,
        "decoder": decoder,
        "precision": "fp32",  # requests name the exact model
        "max_queue_size": "2048",
        "max_pending_preprocess": "4096",
        "request_timeout_s": "60",
    }
    server, grpc_port = service(repository, models, settings, out / "logs" / f"server-{decoder}.log")
    server.argv[server.argv.index("--log-level") + 1] = "INFO"  # the log says which backend each model got
    results: dict[str, Any] = {"settings": settings}
    started = time.monotonic()
    with server:
        results["start_s"] = time.monotonic() - started
        results["backends"] = _backend_lines(out / "logs" / f"server-{decoder}.log")
        for model in models:
            spec = ModelSpec.from_file(next((repository / model).glob("*/model.json")))
            pixels = [preprocess(j, PreprocessSpec.from_model_spec(spec)) for j in jpegs]
            for protocol in protocols:
                if budget.left() < profile.load_s + profile.warmup_s + 15:
                    results[f"{model}/{protocol}"] = "skipped: time"
                    continue
                address = server.base_url if protocol == "http" else f"127.0.0.1:{grpc_port}"
                payloads: list[Any] = pixels if protocol == "v2_pixels" else jpegs
                results[f"{model}/{protocol}"] = saturate(
                    protocol, address, model, payloads, profile, server.pid
                )
                log.info(
                    "service decoder=%s %s/%s %s",
                    decoder,
                    model,
                    protocol,
                    results[f"{model}/{protocol}"]["images_per_s"],
                )
    return results


def _backend_lines(path: Path) -> list[str]:
    try:
        return [
            line.strip()
            for line in path.read_text().splitlines()
            if "preprocess_backend" in line or "nvimgcodec" in line
        ][:20]
    except OSError:
        return []


# --------------------------------------------------------------------------- figures and plots


def figures(report: dict[str, Any]) -> dict[str, Any]:
    bare = report.get("bare", {})
    service = report.get("service", {})
    fig: dict[str, Any] = {}

    def best(model: str) -> float | None:
        entry = bare.get(model)
        return entry.get("best_images_per_s") if isinstance(entry, dict) else None

    def rate(decoder: str, key: str) -> float | None:
        entry = service.get(decoder, {}).get(key)
        return entry.get("images_per_s") if isinstance(entry, dict) else None

    for model in bare:
        reference = best(model)
        pixels = rate("nvimgcodec", f"{model}/v2_pixels") or rate("pillow", f"{model}/v2_pixels")
        if reference and pixels:
            fig[f"{model}: service V2 pixels / bare ORT best"] = pixels / reference
        pillow, gpu = rate("pillow", f"{model}/http"), rate("nvimgcodec", f"{model}/http")
        if pillow and gpu:
            fig[f"{model}: HTTP 1080p JPEG nvimgcodec / Pillow"] = gpu / pillow
        if model.endswith("-fp16") and best(model) and best(model.removesuffix("-fp16")):
            fig[f"{model}: bare best fp16 / fp32"] = best(model) / best(model.removesuffix("-fp16"))  # type: ignore[operator]
    memory = report.get("memory", {})
    for model, entry in memory.items():
        if isinstance(entry, dict):
            fig[f"{model}: memory growth after warm-up (MiB)"] = entry["growth_mib"]
    return fig


def plots(report: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    bare = {m: r for m, r in report.get("bare", {}).items() if isinstance(r, dict)}
    if bare:
        fig, ax = plt.subplots(figsize=(8, 5))
        for model, entry in bare.items():
            points = [(int(b), v["images_per_s"]) for b, v in entry["batches"].items() if isinstance(v, dict)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=model)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="bare ONNX Runtime")
        ax.legend()
        fig.savefig(out / "gpu-bare.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("gpu-bare.png")
    service = report.get("service", {})
    bars = [
        (f"{key} [{decoder}]", value["images_per_s"])
        for decoder, runs in service.items() if isinstance(runs, dict)
        for key, value in runs.items() if isinstance(value, dict) and "images_per_s" in value
    ]  # fmt: skip
    if bars:
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(bars) + 1.5))
        ax.barh([b[0] for b in bars], [b[1] for b in bars])
        ax.set(xlabel="images/s at saturation", title="effnet-serve")
        fig.savefig(out / "gpu-service.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("gpu-service.png")
    return written


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=None, help="override the profile's time budget")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    budget = Budget(args.budget_s or profile.budget_s)
    started = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from service.model_spec import ModelSpec

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(profile),
    }
    wanted = [model_name(v, p) for v in profile.variants for p in profile.precisions]
    models = [m for m in wanted if list((args.repository / m).glob("*/model.onnx"))]
    report["models"] = models
    report["models_missing"] = sorted(set(wanted) - set(models))

    def save() -> None:
        report["figures"] = figures(report)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    specs = {m: ModelSpec.from_file(next((args.repository / m).glob("*/model.json"))) for m in models}
    paths = {m: next((args.repository / m).glob("*/model.onnx")) for m in models}

    report["bare"] = {}
    for model in models:
        if budget.left() < 60:
            report["bare"][model] = "skipped: time"
            continue
        report["bare"][model] = bare_ort(
            paths[model], specs[model].crop_size, profile, Budget(min(budget.left() - 50, 30))
        )
        log.info("bare %s best %s", model, report["bare"][model].get("best_images_per_s"))
        save()

    report["memory"] = {}
    for model in [m for m in (models[0] if models else None, models[-1] if models else None) if m]:
        if model in report["memory"] or budget.left() < 50:
            continue
        try:
            report["memory"][model] = memory_flat(
                paths[model], specs[model].crop_size, specs[model].gmacs, profile
            )
        except Exception as exc:
            report["memory"][model] = f"failed: {exc}"
        save()

    report["service"] = {}
    for decoder in ("pillow", "nvimgcodec"):
        if budget.left() < 40:
            report["service"][decoder] = "skipped: time"
            continue
        protocols = ["http"] if decoder == "pillow" else ["http", "v2_pixels", "v2_image"]
        try:
            report["service"][decoder] = service_runs(
                args.repository, models, decoder, profile, budget, out, protocols
            )
        except Exception as exc:
            report["service"][decoder] = f"failed: {exc}"
        save()

    report["plots"] = plots(report, out)
    save()
    print(json.dumps(report["figures"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
