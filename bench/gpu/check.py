"""The GPU device check's measurements (bench/gpu/run.sh calls this; see bench/gpu/README.md).

Phases, most wanted first, each run only when what is left of one time budget covers its estimate
(else recorded as skipped, with the time left), and gpu.json rewritten after every model of every phase
and every protocol of a server, so a run cut short still reports (bench/gpu/record.py merges into what
run.sh's steps wrote):
1. bare ONNX Runtime (CUDA) for the first variant in fp32 and fp16, batch 1..256;
2. GPU memory over random batch sizes after warm-up, through the service's runtime: must stay flat;
3. the service at saturation for the service variants, one server per decoder (Pillow, then
   nvImageCodec): HTTP /classify with 1080p JPEGs, then V2 gRPC with `pixels` one and 16 per request,
   on streams, and with `image`; then the split mode (front processes) where the server knows it;
4. `runtime_options` (bench/gpu/runtime_options.py): GPU memory and speed of the runtime's variants;
5. bare ORT for the other variants, then the fp32 models once more with TF32 on.
fp32 runs with TF32 off (true fp32) and again with it on; fp16 with it on (TF32 changes only fp32
arithmetic, and off it may cost fp16 its tensor-core engines). `figures_tf32` says, for each figure,
the TF32 setting of what it compares; `environment` the cuDNN that loaded and the GPU's clocks and power
state (null on the CPU); every session entry its intra-op threads.
The check stops (and says why in `stopped`) when a session meant for CUDA got another provider: every
figure after that would be a CPU figure. A session that fails, a phase that raises, SIGTERM from a
`timeout`: each is recorded with what was measured before it.
`--profile dry` runs the same on the CPU provider with small settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu import record
from bench.gpu.device_state import cudnn_version, gpu_memory_used_mib, gpu_state
from bench.gpu.figures import figures, figures_with_tf32, plots, runtime_is_slow
from bench.gpu.runtime_options import runtime_options
from bench.gpu.serving import service_runs

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench.gpu")
CUDA_PROVIDER = "CUDAExecutionProvider"
# The split mode's setting (fronts + one engine process): its case runs only where the server knows it.
FRONT_PROCESSES = "EFFNET_FRONT_PROCESSES"


def split_mode_known() -> bool:
    from service.settings import Settings

    return "front_processes" in Settings.model_fields


@dataclass(frozen=True)
class Profile:
    device: str  # "cuda" or "cpu"
    variants: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    bare_budget_s: float  # timed window per batch size
    load_s: float
    warmup_s: float
    concurrency: int  # per client process
    client_processes: int
    memory_steps: int
    budget_s: float
    service_variants: tuple[str, ...]
    bare_model_s: float  # estimate for one model's bare sweep (a phase runs only if it fits)
    memory_s: float
    service_s: float  # one decoder's server: start, warm-up and its protocols
    options_variant_s: float  # one runtime_options variant: its process, warm-up and runs
    options_steps: int  # random-size batches per runtime_options variant
    front_processes: int  # EFFNET_FRONT_PROCESSES of the split-mode case


PROFILES = {
    "gpu": Profile(
        device="cuda",
        variants=("b0", "b3", "b7"),
        precisions=("fp32", "fp16"),
        batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        bare_budget_s=0.3,
        load_s=3.0,
        warmup_s=1.0,
        concurrency=32,
        client_processes=4,
        memory_steps=150,
        budget_s=150.0,
        service_variants=("b0",),
        bare_model_s=8.0,
        memory_s=15.0,
        service_s=30.0,
        options_variant_s=20.0,
        options_steps=60,
        front_processes=4,
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
        service_variants=("b0",),
        bare_model_s=2.0,
        memory_s=3.0,
        service_s=9.0,
        options_variant_s=4.0,
        options_steps=8,
        front_processes=2,
    ),
}


class StopCheck(BaseException):
    """Stops the whole check: what follows would measure the wrong thing (or nothing). A BaseException,
    so that the per-phase `except Exception` that records a phase's failure and goes on lets it pass."""

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason


class Budget:
    """Seconds left of a budget that may be zero or negative (then nothing fits)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, needed_s: float) -> bool:
        return self.left() >= needed_s

    def skip(self, needed_s: float) -> str:
        return f"skipped: time ({max(self.left(), 0.0):.0f} s left, needs about {needed_s:.0f} s)"


def model_name(variant: str, precision: str) -> str:
    return variant if precision == "fp32" else f"{variant}-{precision}"


def environment(profile: Profile) -> dict[str, Any]:
    import onnxruntime as ort

    from service.runtime.cpu_quota import cpu_quota_cores

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "available_providers": ort.get_available_providers(),
        "cpu_cores": os.cpu_count(),
        "profile": asdict(profile),
        "cpu_quota_cores": cpu_quota_cores(),  # a quota would cap every CPU-side stage of the service
        "affinity_cores": len(os.sched_getaffinity(0)),
        "cudnn": cudnn_version(profile.device),  # None on the CPU
        "gpu_state": gpu_state(),  # clocks, performance state, power; None without nvidia-smi
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
        "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR"),
    }
    build_info = getattr(ort, "get_build_info", None)
    if callable(build_info):
        info["onnxruntime_build"] = build_info()
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


def bare_ort(
    model_path: Path, crop: int, profile: Profile, budget: Budget, tf32: bool = False
) -> dict[str, Any]:
    """A plain ORT session (`session.run` on host arrays) at each batch size: the reference.

    TF32 is set explicitly (ORT's CUDA provider option `use_tf32`, on by default there): off, fp32
    is true fp32. Raises StopCheck when a session meant for CUDA got another provider."""
    import onnxruntime as ort

    from bench.stats import median

    providers: list[Any] = ["CPUExecutionProvider"]
    if profile.device == "cuda":
        cuda_options = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "1" if tf32 else "0"}
        providers.insert(0, (CUDA_PROVIDER, cuda_options))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    provider = session.get_providers()[0]
    result: dict[str, Any] = {
        "provider": provider,
        "tf32": tf32 if profile.device == "cuda" else None,
        "intra_op_threads": options.intra_op_num_threads,  # 0: ORT's default, one per core
        "provider_options": session.get_provider_options().get(provider, {}),
        "batches": {},
    }
    if profile.device == "cuda" and provider != CUDA_PROVIDER:
        raise StopCheck("bare", f"{model_path.parent.parent.name}: the session fell back to {provider}")
    rng = np.random.default_rng(0)
    for size in profile.batch_sizes:
        if not budget.fits(profile.bare_budget_s + 1):
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
    pair = [size for size in profile.batch_sizes if str(size) in measured][-2:]
    if len(pair) == 2 and budget.fits(profile.bare_budget_s * 2 + 1):
        result["alternating"] = _alternating(session, crop, pair, measured, profile.bare_budget_s * 2)
    if measured:
        best = max(measured.items(), key=lambda kv: kv[1]["images_per_s"])
        result["best_batch"], result["best_images_per_s"] = int(best[0]), best[1]["images_per_s"]
    return result


def _alternating(
    session: Any, crop: int, pair: list[int], measured: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The two largest sizes taking turns, as batches do under a varying load: with cuDNN 9, ORT's
    convolutions rebuild their plans whenever the input shape changes (the cause of the first check's
    slow service). Median ms per run, against the mean of the same two sizes run one at a time."""
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (size, 3, crop, crop), dtype=np.uint8) for size in pair]
    alternating = alternating_ms(
        lambda batch: session.run(["probabilities"], {"pixels": batch}), batches, seconds
    )
    fixed = sum(measured[str(size)]["ms_per_batch"] for size in pair) / 2
    return {"sizes": pair, "ms_per_run": alternating, "fixed_ms_per_run": fixed, "ratio": alternating / fixed}


def alternating_ms(run: Callable[[np.ndarray], object], pair: list[np.ndarray], seconds: float) -> float:
    """Median ms per run while the two batches of `pair` take turns, for `seconds` (at least 4 runs, after
    one of each untimed)."""
    from bench.stats import median

    for batch in pair:
        run(batch)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 4 or time.perf_counter() < end:
        start = time.perf_counter()
        run(pair[len(times) % 2])
        times.append(time.perf_counter() - start)
    return median(times) * 1000


# --------------------------------------------------------------------------- 2. memory


def memory_flat(model_path: Path, crop: int, gmacs: float, profile: Profile) -> dict[str, Any]:
    """Warm the service's runtime as the engine does, then random batch sizes: memory before/after."""
    import psutil

    from service.runtime.session import OrtRunner, RuntimeOptions, warmup_batch_sizes
    from service.settings import Settings

    # Buckets and IO binding are what CUDA gets by default; asked for explicitly so the dry run on
    # the CPU provider goes the same way.
    settings = Settings(device=profile.device, batch_buckets="on", io_binding="on", cuda_tf32=False)
    runner = OrtRunner(model_path, RuntimeOptions.from_settings(settings), ["logits", "probabilities"])
    max_batch = settings.batch_size_for(runner.provider, gmacs)
    runner.warm_up((3, crop, crop), warmup_batch_sizes(max_batch), runs=2)
    process = psutil.Process()
    rng = random.Random(0)
    rows = np.random.default_rng(0).integers(0, 256, (max_batch, 3, crop, crop), dtype=np.uint8)
    samples: list[dict[str, float | None]] = []
    run_s = 0.0  # the batches alone (random sizes: they change shape from batch to batch, as under load)
    for step in range(profile.memory_steps):
        n = rng.randint(1, max_batch)
        started = time.perf_counter()
        runner.run_items(list(rows[:n]))
        run_s += time.perf_counter() - started
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
        "bucket_sessions": runner.use_bucket_sessions,
        "intra_op_threads": runner.intra_op_threads,
        "max_batch": max_batch,
        "mean_ms_per_batch": run_s * 1000 / profile.memory_steps,
        "steps": profile.memory_steps,
        "measured": key,
        "samples": samples,
        "growth_mib": growth,
        "flat": abs(growth) <= 64.0,
    }


# --------------------------------------------------------------------------- main


def parse_budget(value: float | None, profile: Profile) -> float:
    """--budget-s as given, 0 and negative included (then nothing fits); absent: the profile's."""
    return profile.budget_s if value is None else float(value)


def _terminated(signum: int, frame: object) -> None:
    raise StopCheck("check", f"terminated by signal {signum} (a timeout?)")


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when the check ran to its end (phases it had no time for are recorded as skipped), 1
    when it stopped early (no budget, a CPU fallback, a crash, a signal): gpu.json says why."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--budget-s", type=float, default=None, help="seconds for the whole check (default: the profile's)"
    )
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: the profile's)")
    parser.add_argument(
        "--yield-if-slow", action="store_true",
        help="when the service's runtime is slow (the diagnosis will follow), skip the phases after the "
        "service and leave their time to it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    if args.variants:
        chosen = tuple(v for v in args.variants.split(",") if v)
        profile = replace(profile, variants=chosen, service_variants=chosen[:1])
    budget = Budget(parse_budget(args.budget_s, profile))
    started = time.monotonic()
    out: Path = args.out
    previous = signal.signal(signal.SIGTERM, _terminated)
    report: dict[str, Any] = {
        "check_started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": args.profile,
        "device": profile.device,
        "budget_s": budget.seconds,
        "bare": {},
        "bare_tf32": {},
        "memory": {},
        "service": {},
        "runtime_options": {},
        "phases": {},
    }

    def save(phase: str | None = None, status: str = "done") -> None:
        if phase is not None:
            report["phases"][phase] = status
        try:
            report["figures"], report["figures_tf32"] = figures_with_tf32(report)
        except Exception as exc:  # a figure must never cost the measurements
            report["figures"] = f"failed: {type(exc).__name__}: {exc}"
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        record.update(out, **report)

    try:
        save()
        report["environment"] = environment(profile)
        save()
        if budget.seconds <= 0:
            raise StopCheck("check", f"no time budget (--budget-s {budget.seconds:g}): nothing measured")
        status = _measure(args.repository, out, profile, budget, report, save, args.yield_if_slow)
        report["plots"] = plots(report, out)
        save()
        return status
    except StopCheck as stop:
        save()
        record.stop(out, stop.phase, stop.reason)
        log.error("check stopped in %s: %s", stop.phase, stop.reason)
        return 1
    except Exception as exc:
        report["error"] = traceback.format_exc()[-2000:]
        save()
        record.stop(out, "check", f"{type(exc).__name__}: {exc}")
        log.exception("check failed")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _measure(
    repository: Path,
    out: Path,
    profile: Profile,
    budget: Budget,
    report: dict[str, Any],
    save: Callable[..., None],
    yield_if_slow: bool = False,
) -> int:
    from service.model_spec import ModelSpec

    wanted = [model_name(v, p) for v in profile.variants for p in profile.precisions]
    models = [m for m in wanted if list((repository / m).glob("*/model.onnx"))]
    report["models"] = models
    report["models_missing"] = sorted(set(wanted) - set(models))
    if not models:
        raise StopCheck("models", f"none of {wanted} in {repository} (did the export run?)")
    specs = {m: ModelSpec.from_file(next((repository / m).glob("*/model.json"))) for m in models}
    paths = {m: next((repository / m).glob("*/model.onnx")) for m in models}
    save("models")

    def bare(model: str, key: str, tf32: bool) -> None:
        if not budget.fits(profile.bare_model_s):
            report[key][model] = budget.skip(profile.bare_model_s)
            return
        try:
            report[key][model] = bare_ort(paths[model], specs[model].crop_size, profile, budget, tf32=tf32)
        except Exception as exc:  # a session that cannot be created or run: recorded, the others go on
            report[key][model] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        log.info("%s %s: %s", key, model, _best(report[key][model]))
        save()

    first = [m for m in models if m.split("-")[0] == profile.variants[0]]
    for model in first:  # fp32 with TF32 off (true fp32), fp16 with it on (it changes only fp32 maths)
        bare(model, "bare", tf32=model.endswith("-fp16"))
    save("bare (first variant)")

    model = models[0]
    if budget.fits(profile.memory_s):
        try:
            report["memory"][model] = memory_flat(
                paths[model], specs[model].crop_size, specs[model].gmacs, profile
            )
        except Exception as exc:
            report["memory"][model] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        save("memory")
    else:
        save("memory", budget.skip(profile.memory_s))

    service_models = [m for m in models if m in profile.service_variants]
    for decoder in ("pillow", "nvimgcodec"):
        if not service_models or not budget.fits(profile.service_s):
            report["service"][decoder] = (
                budget.skip(profile.service_s) if service_models else "skipped: no model"
            )
            continue
        # x16 before the streams: the runtime's figure is wanted most, and streams never ran on a GPU.
        protocols = (
            ["http"]
            if decoder == "pillow"
            else ["http", "v2_pixels", "v2_pixels_x16", "v2_stream_pixels", "v2_image"]
        )
        runs: dict[str, Any] = {}
        report["service"][decoder] = runs  # filled protocol by protocol, gpu.json saved after each
        try:
            service_runs(repository, service_models, decoder, profile, budget, out, protocols, runs, save)
        except Exception as exc:  # the server did not start: what ran before it is kept
            runs["error"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        save()
    save("service")
    if yield_if_slow and service_models and runtime_is_slow(figures(report)):
        reason = "skipped: the runtime is slow (16 images per request < half of bare): time to the diagnosis"
        for name in ("service split", "runtime options", "bare (other variants)", "bare TF32 on"):
            save(name, reason)
        return 0

    # The split mode (fronts + one engine process), where this checkout's server knows it.
    if not service_models:
        save("service split", "skipped: no model")
    elif not split_mode_known():
        save("service split", f"skipped: the server's settings have no {FRONT_PROCESSES}")
    elif not budget.fits(profile.service_s):
        save("service split", budget.skip(profile.service_s))
    else:
        split: dict[str, Any] = {}
        report["service"]["split"] = split
        try:
            service_runs(
                repository, service_models, "nvimgcodec", profile, budget, out,
                ["v2_pixels", "v2_stream_pixels"], split, save,
                extra_settings={"front_processes": str(profile.front_processes)}, log_name="split",
            )  # fmt: skip
        except Exception as exc:
            split["error"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        save("service split")

    # Intra-op threads, one session for all buckets, a shared arena, CUDA graphs: GPU memory and speed.
    variants: dict[str, Any] = {}
    report["runtime_options"][model] = variants
    runtime_options(
        paths[model], specs[model].crop_size, specs[model].gmacs, profile.device, profile.options_steps,
        budget.left, profile.options_variant_s, variants, save,
    )  # fmt: skip
    save("runtime options")

    for model in [m for m in models if m not in first]:
        bare(model, "bare", tf32=model.endswith("-fp16"))
    save("bare (other variants)")
    if profile.device == "cuda":
        for model in [m for m in models if "-" not in m]:
            bare(model, "bare_tf32", tf32=True)
        save("bare TF32 on")
    else:
        save("bare TF32 on", "skipped: the CPU provider has no TF32")
    return 0


def _best(entry: Any) -> Any:
    return entry.get("best_images_per_s") if isinstance(entry, dict) else entry


if __name__ == "__main__":
    sys.exit(main())
