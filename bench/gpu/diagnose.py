"""Where a batch's time goes on the GPU: the runtime's steps against bare ONNX Runtime, and the server's
stages under load (bench/gpu/run.sh's `diagnose` step; bench/gpu/README.md).

The first device check (2026-12-04) measured bare b0 on CUDA at 9,000 images/s and the server at
86-128, every request about one second: something in the service's own path costs ~1,000x what the
session does. This finds the step, in one call:
1. `runtime`: b0 at batch 1, 32 and 128, median ms per batch of
   - `bare`: a plain session with ORT's default options (`session.run` on a host array);
   - `service_options`: a session with the service's options, `session.run` (no IO binding);
   - `runner`: the service's OrtRunner as the engine uses it (buckets, a session per bucket, IO binding,
     buffer sets), its steps timed apart (rows in, the run, outputs out); `runner_one_session`: the
     same with one session for every bucket (as before 2026-12-04);
   - `runner_no_binding`: the OrtRunner with IO binding off;
   - `bare_fp16`, `bare_fp16_nhwc`: b0-fp16 (when the repository has it) with ORT's `prefer_nhwc` off
     and on (fp16 reached only 1.5x fp32 on the first machine);
   each also with the two largest sizes taking turns (`alternating_ms`: with cuDNN 9, ORT rebuilds a
   convolution's plan whenever its input shape differs from the last run's, the suspect),
   and a cProfile of the runner's batches of the largest size (the functions that take the time).
2. `server`: b0 served at 128 clients as the check serves it: V2 pixels 16 images per request (the
   figure that triggers the diagnosis), V2 pixels one per request (no decoding) with the
   defaults and with one session for every bucket, HTTP with 1080p JPEGs (Pillow), V2 pixels with IO
   binding off and with one instance; images/s, p50,
   and the server's own stage histograms (preprocess, queue, inference, batch size) as means.
`machine` records what the server sizes itself by (affinity, a cgroup CPU quota, the cores, decode
threads, spinning): a quota would cap every CPU-side stage. diagnose.json is rewritten after every
case (a case that was cut off reads "running"), and on SIGTERM (`stopped`); a failing case is recorded
and the rest goes on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu.check import alternating_ms
from bench.gpu.figures import SLOW_SERVICE, STACKED, runtime_is_slow

log = logging.getLogger("bench.gpu.diagnose")
CUDA = "CUDAExecutionProvider"
SIZES = (1, 32, 128)  # the largest is also the one whose steps are timed apart and profiled
OUTPUTS = ["logits", "probabilities"]
ALTERNATING_S = 1.0  # the two largest sizes take turns this long (at least 4 runs)


def _median_ms(step: Callable[[], object], runs: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def runtime(
    model_path: Path,
    crop: int,
    device: str,
    runs: int,
    sizes: tuple[int, ...] = SIZES,
    result: dict[str, Any] | None = None,
    saved: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Fills `result` case by case (calling `saved` after each), so a run cut short keeps its cases."""
    import onnxruntime as ort

    from service.runtime.session import (
        OrtRunner,
        RuntimeOptions,
        build_session_options,
        provider_list,
        warmup_batch_sizes,
    )
    from service.settings import Settings

    rng = np.random.default_rng(0)
    batches = {n: rng.integers(0, 256, (n, 3, crop, crop), dtype=np.uint8) for n in sizes}
    result = {} if result is None else result

    providers: list[Any] = (
        [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"})] if device == "cuda" else []
    )
    bare_providers = [*providers, "CPUExecutionProvider"]
    settings = Settings(device=device, max_batch_size=max(sizes), cuda_tf32=False)
    options = RuntimeOptions.from_settings(settings)
    cuda = device == "cuda"
    # Which half of the service's choices (session options, provider options) makes a difference.
    for key, session_options, session_providers in (
        ("bare", ort.SessionOptions(), bare_providers),
        ("service_options", build_session_options(options, cuda), provider_list(options)),
        ("service_session_options_only", build_session_options(options, cuda), bare_providers),
        ("service_provider_options_only", ort.SessionOptions(), provider_list(options)),
    ):
        session = ort.InferenceSession(
            str(model_path), sess_options=session_options, providers=session_providers
        )
        result[key] = {"provider": session.get_providers()[0], **_session_sizes(session, batches, runs)}
        if key == "bare":  # the suspect: a batch size other than the last one's rebuilds cuDNN's plans
            result[key]["alternating_ms"] = alternating_ms(
                partial(_session_run, session), [batches[n] for n in sizes[-2:]], ALTERNATING_S
            )
        log.info("%s %s", key, result[key])
        saved()

    fp16_path = model_path.parents[2] / "b0-fp16" / "1" / "model.onnx"  # beside b0 in the repository
    if device == "cuda" and fp16_path.exists():
        # fp16 reached 1.5x fp32 on the first machine (goal 1.8x); cuDNN's tensor cores prefer NHWC.
        # TF32 on: it changes only fp32 arithmetic, and off it may drop cuDNN's tensor-core engines for
        # fp16 too (the first machine's "No execution plans" lines).
        for key, nhwc in (("bare_fp16", "0"), ("bare_fp16_nhwc", "1")):
            cuda = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "1", "prefer_nhwc": nhwc}
            session = ort.InferenceSession(str(fp16_path), providers=[(CUDA, cuda), "CPUExecutionProvider"])
            result[key] = {"provider": session.get_providers()[0], **_session_sizes(session, batches, runs)}
            log.info("%s %s", key, result[key])
            saved()

    for key, runtime_options in (
        ("runner", replace(options, batch_buckets="on", io_binding="on")),
        ("runner_one_session", replace(options, batch_buckets="on", io_binding="on", bucket_sessions="off")),
        ("runner_no_binding", replace(options, batch_buckets="on", io_binding="off")),
    ):
        runner = OrtRunner(model_path, runtime_options, OUTPUTS)
        started = time.perf_counter()
        runner.warm_up((3, crop, crop), warmup_batch_sizes(max(sizes)), runs=2)
        entry: dict[str, Any] = {
            "provider": runner.provider,
            "io_binding": runner.use_io_binding,
            "warm_up_s": time.perf_counter() - started,
            "bucket_sessions": runner.use_bucket_sessions,
            **_runner_sizes(runner, batches, runs),
            "alternating_ms": alternating_ms(
                partial(_runner_run, runner), [batches[n] for n in sizes[-2:]], ALTERNATING_S
            ),
        }
        if runner.use_io_binding:
            rows = list(batches[max(sizes)])
            entry["steps_largest"] = _bound_steps(runner, rows, runs)
            entry["profile_largest"] = _profile(partial(runner.run_items, rows), 5)
        result[key] = entry
        log.info("%s %s", key, {k: v for k, v in entry.items() if k != "profile_largest"})
        saved()
    return result


def _session_sizes(session: Any, batches: dict[int, np.ndarray], runs: int) -> dict[str, float]:
    return {
        str(n): _median_ms(partial(session.run, OUTPUTS, {"pixels": b}), runs) for n, b in batches.items()
    }


def _session_run(session: Any, batch: np.ndarray) -> object:
    return session.run(OUTPUTS, {"pixels": batch})


def _runner_run(runner: Any, batch: np.ndarray) -> object:
    return runner.run_items(list(batch))


def _runner_sizes(runner: Any, batches: dict[int, np.ndarray], runs: int) -> dict[str, float]:
    return {str(n): _median_ms(partial(runner.run_items, list(b)), runs) for n, b in batches.items()}


def _bound_steps(runner: Any, rows: list[np.ndarray], runs: int) -> dict[str, float]:
    """The bound path's three steps timed apart, ms medians: rows in, the run, outputs out."""
    load, run, fetch = [], [], []
    for _ in range(runs + 2):
        buffers = runner.buffer_sets.take()
        try:
            bound = buffers.batches[len(rows)]
            t0 = time.perf_counter()
            bound.load(rows)
            t1 = time.perf_counter()
            bound.session.run_with_iobinding(bound._binding, bound.run_options)
            t2 = time.perf_counter()
            bound._binding.copy_outputs_to_cpu()
            t3 = time.perf_counter()
        finally:
            runner.buffer_sets.give_back(buffers)
        load.append(t1 - t0)
        run.append(t2 - t1)
        fetch.append(t3 - t2)
    return {
        name: float(np.median(values[2:]) * 1000)
        for name, values in (("load_ms", load), ("run_ms", run), ("fetch_ms", fetch))
    }


def _profile(step: Callable[[], object], runs: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return text.getvalue()[-6000:]


SERVER_CASES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("default", "v2_pixels_x16", {}),  # the runtime's figure first (what triggered the diagnosis)
    ("default", "v2_pixels", {}),
    ("one_session", "v2_pixels", {"bucket_sessions": "off"}),
    ("default", "http", {}),
    ("io_binding_off", "v2_pixels", {"io_binding": "off"}),
    ("one_instance", "v2_pixels", {"instances": "1"}),
)


def server(
    repository: Path,
    device: str,
    load_s: float,
    results: dict[str, Any] | None = None,
    saved: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Each case of SERVER_CASES in its own server, written into `results` (and `saved`) as it ends."""
    from bench.gpu.check import PROFILES
    from bench.gpu.serving import stacked_payloads
    from bench.images import FULL_HD, make_jpegs
    from service.model_spec import ModelSpec
    from service.preprocess.images import PreprocessSpec, preprocess

    profile = replace(PROFILES["gpu" if device == "cuda" else "dry"], load_s=load_s)
    jpegs = make_jpegs(FULL_HD, count=4)
    spec = ModelSpec.from_file(repository / "b0" / "1" / "model.json")
    pixels = [preprocess(j, PreprocessSpec.from_model_spec(spec)) for j in jpegs]
    results = {} if results is None else results
    for key, kind, extra in SERVER_CASES:
        settings = {
            "device": device, "decoder": "pillow", "precision": "fp32", "cuda_tf32": "false",
            "max_queue_size": "2048", "max_pending_preprocess": "4096", "request_timeout_s": "60",
            **extra,
        }  # fmt: skip
        # Server logs stay out of $OUT (8 files come back at most); a failing case quotes its tail.
        server_log = Path(tempfile.gettempdir()) / f"diagnose-server-{key}-{kind}.log"
        results[f"{key}/{kind}"] = "running"  # what a SIGTERM in the middle of this case leaves
        saved()
        try:
            per_request = STACKED if kind == "v2_pixels_x16" else 1
            payloads = jpegs if kind == "http" else stacked_payloads(pixels, per_request)
            results[f"{key}/{kind}"] = server_case(
                repository, settings, kind, payloads, profile, server_log, per_request
            )
            log.info("server %s/%s %s", key, kind, results[f"{key}/{kind}"])
        except Exception:
            tail = server_log.read_text(errors="replace")[-1500:] if server_log.exists() else ""
            results[f"{key}/{kind}"] = {"error": traceback.format_exc()[-1500:], "server_log": tail}
        saved()
    return results


def server_case(
    repository: Path,
    settings: dict[str, str],
    kind: str,
    payloads: list[Any],
    profile: Any,
    server_log: Path,
    images_per_request: int = 1,
) -> dict[str, Any]:
    """b0 served with `settings`, saturated with `kind` requests; with the server's stage means."""
    import httpx

    from bench.gpu.serving import saturate
    from bench.servers import service

    proc, grpc_port = service(repository, ["b0"], settings, server_log)
    with proc:
        address = proc.base_url if kind == "http" else f"127.0.0.1:{grpc_port}"
        load = saturate(kind, address, "b0", payloads, profile, proc.pid, images_per_request)
        load["stages"] = _stage_means(httpx.get(proc.base_url + "/metrics", timeout=10).text)
    return load


def _stage_means(text: str) -> dict[str, float]:
    """Mean of each of the server's stage histograms for b0 (seconds -> ms; batch size as is)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") not in (None, "b0"):
                continue
            if sample.name.endswith("_sum"):
                sums[sample.name[:-4]] = sums.get(sample.name[:-4], 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[sample.name[:-6]] = counts.get(sample.name[:-6], 0.0) + sample.value
    means = {}
    for name, total in sums.items():
        if counts.get(name) and name.startswith("effnet_"):
            scale = 1000.0 if name.endswith("_seconds") else 1.0
            means[name] = total / counts[name] * scale
    return means


def machine() -> dict[str, Any]:
    """What the server sizes itself by on this machine: a CPU quota would cap every CPU-side stage."""
    import os

    from service.runtime.cpu_quota import cpu_quota_cores
    from service.settings import Settings

    settings = Settings()
    return {
        "affinity_cores": len(os.sched_getaffinity(0)),
        "cgroup_quota_cores": cpu_quota_cores(),
        "settings_cores": settings.cores,
        "allow_spinning": settings.effective_allow_spinning,
        "preprocess_workers": settings.effective_preprocess_workers,
        "load_average": os.getloadavg(),
    }


def service_is_slow(gpu_json: Path) -> bool:
    """Whether the check's service reached less than half of bare ORT with 16 images per V2 request,
    or left no such figure (a check that stopped early says nothing good)."""
    try:
        figures = json.loads(gpu_json.read_text()).get("figures", {})
    except (OSError, ValueError):
        return True
    return runtime_is_slow(figures)


class Terminated(BaseException):
    """SIGTERM (run.sh's `timeout`): ends the diagnosis, whose finished cases are saved already."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum} (a timeout?)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--load-s", type=float, default=5.0)
    parser.add_argument("--sections", default="runtime,server")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="batch sizes, comma-separated")
    parser.add_argument(
        "--if-slow", type=Path, default=None, metavar="GPU_JSON",
        help="only say whether the check in GPU_JSON found the service slow: exit 0 if so, else 1",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.if_slow is not None:
        slow = service_is_slow(args.if_slow)
        print(f"service below {SLOW_SERVICE} of bare ORT (or no figure): {slow}")
        return 0 if slow else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.repository / "b0" / "1" / "model.onnx"
    crop = json.loads((model_path.parent / "model.json").read_text())["crop_size"]
    target = args.out / "diagnose.json"
    report: dict[str, Any] = {}

    def save() -> None:  # atomically: a SIGTERM in the middle of a write leaves the previous file whole
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(json.dumps(report, indent=1, default=str))
        partial.replace(target)

    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        report["machine"] = machine()
        save()
        for section in args.sections.split(","):
            started = time.monotonic()
            cases: dict[str, Any] = {}
            report[section] = cases  # filled case by case, saved after each
            try:
                if section == "runtime":
                    sizes = tuple(int(n) for n in args.sizes.split(","))
                    runtime(model_path, crop, args.device, args.runs, sizes, cases, save)
                elif section == "server":
                    server(args.repository, args.device, args.load_s, cases, save)
            except Exception:
                cases["error"] = traceback.format_exc()[-2000:]
            report[f"{section}_s"] = time.monotonic() - started
            save()
    except Terminated as stop:
        report["stopped"] = str(stop)
        save()
        log.error("diagnosis stopped: %s", stop)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
