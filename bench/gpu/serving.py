"""The device check's served measurements: a server of ours started with given settings, saturated by
several load-generator processes (one asyncio client cannot saturate a GPU), one protocol after another,
each result saved as soon as it ends (check.py's service phases; diagnose.py's server cases)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.gpu.figures import STACKED

if TYPE_CHECKING:
    from bench.gpu.check import Budget, Profile

log = logging.getLogger("bench.gpu")


def _client(
    kind: str, address: str, model: str, payloads: list[Any], spec: dict[str, Any], pid: int
) -> dict[str, Any]:
    """One load-generator process (several run at once: one asyncio client cannot saturate a GPU)."""
    from bench.loadgen import LoadSpec, run_load
    from bench.targets import HttpClassify, Target, V2Infer, V2Stream, v2_image_request, v2_pixels_request

    target: Target
    if kind == "http":
        target = HttpClassify(address, model, payloads)
    elif kind == "v2_stream_pixels":  # one image per request, the requests on streams (ModelStreamInfer)
        target = V2Stream(address, [v2_pixels_request(model, p) for p in payloads], kind)
    elif kind.startswith("v2_pixels"):  # one image per request, or a stack of them (v2_pixels_x16)
        target = V2Infer(address, [v2_pixels_request(model, p) for p in payloads], kind)
    else:
        target = V2Infer(address, [v2_image_request(model, b) for b in payloads], kind)
    result = asyncio.run(run_load(target, LoadSpec(**spec), server_pid=pid))
    return {"summary": result.summary, "cpu": result.cpu.as_dict()}


def saturate(
    kind: str,
    address: str,
    model: str,
    payloads: list[Any],
    profile: Profile,
    pid: int,
    images_per_request: int = 1,
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
        "images_per_s": sum(s["throughput"] for s in summaries) * images_per_request,
        "images_per_request": images_per_request,
        "ok": ok,
        "statuses": [s["statuses"] for s in summaries],
        "p50_ms": float(np.median([s["p50_ms"] for s in summaries if s["p50_ms"] is not None] or [np.nan])),
        "p99_ms": max((s["p99_ms"] for s in summaries if s["p99_ms"] is not None), default=None),
        "server_cores": parts[0]["cpu"].get("server"),  # cores the server process tree used
        "client_cores": sum(p["cpu"].get("client") or 0.0 for p in parts),
        "machine_cores": parts[0]["cpu"].get("machine"),
    }


def stacked_payloads(pixels: list[np.ndarray], per_request: int) -> list[np.ndarray]:
    """The rows as they are (one image per request), or 4 stacks of `per_request` rows each: what one
    client's own batching leaves to the server."""
    if per_request == 1:
        return pixels
    return [np.stack([pixels[(i + j) % len(pixels)] for j in range(per_request)]) for i in range(4)]


def service_runs(
    repository: Path,
    models: list[str],
    decoder: str,
    profile: Profile,
    budget: Budget,
    out: Path,
    protocols: list[str],
    results: dict[str, Any] | None = None,
    saved: Callable[[], None] = lambda: None,
    extra_settings: dict[str, str] | None = None,
    log_name: str | None = None,
) -> dict[str, Any]:
    """One server for `decoder`, saturated with each protocol in turn. Each protocol's result goes into
    `results` (and `saved`) as soon as it ends; a protocol that fails is recorded and the next runs."""
    from bench.images import FULL_HD, make_jpegs
    from bench.servers import service
    from service.model_spec import ModelSpec
    from service.preprocess.images import PreprocessSpec, preprocess

    results = {} if results is None else results
    jpegs = make_jpegs(FULL_HD, count=4)
    settings = {
        "device": profile.device,
        "decoder": decoder,
        "precision": "fp32",  # requests name the exact model
        "cuda_tf32": "false",  # as the bare reference
        "max_queue_size": "2048",
        "max_pending_preprocess": "4096",
        "request_timeout_s": "60",
        **(extra_settings or {}),
    }
    server_log = out / "logs" / f"server-{log_name or decoder}.log"
    server, grpc_port = service(repository, models, settings, server_log)
    server.argv[server.argv.index("--log-level") + 1] = "INFO"  # the log says which backend each model got
    results["settings"] = settings
    results["intra_op_threads"] = server_intra_op_threads(settings)
    started = time.monotonic()
    with server:
        results["start_s"] = time.monotonic() - started
        results["backends"] = _backend_lines(server_log)
        saved()
        for model in models:
            spec = ModelSpec.from_file(next((repository / model).glob("*/model.json")))
            pixels = [preprocess(j, PreprocessSpec.from_model_spec(spec)) for j in jpegs]
            for protocol in protocols:
                key = f"{model}/{protocol}"
                if budget.left() < profile.load_s + profile.warmup_s + 15:
                    results[key] = "skipped: time"
                    continue
                address = server.base_url if protocol == "http" else f"127.0.0.1:{grpc_port}"
                per_request = STACKED if protocol == "v2_pixels_x16" else 1
                payloads = (
                    jpegs if protocol in ("http", "v2_image") else stacked_payloads(pixels, per_request)
                )
                try:
                    results[key] = saturate(
                        protocol, address, model, payloads, profile, server.pid, per_request
                    )
                except Exception as exc:  # this protocol's figure is lost, not the others'
                    results[key] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                log.info("service decoder=%s %s %s", decoder, key, _rate(results[key]))
                saved()
    return results


def server_intra_op_threads(settings: dict[str, str]) -> int:
    """The intra-op threads of each session of a server started with `settings` (EFFNET_* values)."""
    from service.runtime.session import RuntimeOptions, intra_op_threads
    from service.settings import Settings

    known = {key: value for key, value in settings.items() if key in Settings.model_fields}
    effective = Settings(**known)  # type: ignore[arg-type]  # strings, as the environment gives them
    return intra_op_threads(RuntimeOptions.from_settings(effective), effective.device == "cuda")


def _rate(entry: Any) -> Any:
    return entry.get("images_per_s") if isinstance(entry, dict) else entry


def _backend_lines(path: Path) -> list[str]:
    try:
        return [
            line.strip()
            for line in path.read_text().splitlines()
            if "preprocess_backend" in line or "nvimgcodec" in line
        ][:20]
    except OSError:
        return []
