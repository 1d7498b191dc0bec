"""The benchmark harness: one run's state (profile, repository, images, the references and runs measured
so far) and the measurements each profile is made of. `bench.run` drives it for a whole profile;
`bench.explain` and the other single measurements use it on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench import references, servers
from bench.cpu import wait_for_quiet
from bench.images import FULL_HD, make_jpegs
from bench.loadgen import LoadSpec, run_load
from bench.pinning import Pinning
from bench.profiles import ALL_VARIANTS, Profile
from bench.targets import (
    GrpcClassify,
    HttpClassify,
    Target,
    V2Infer,
    V2Stream,
    v2_image_request,
    v2_pixels_request,
)
from service.model_spec import ModelSpec
from service.preprocess.images import PreprocessSpec, preprocess
from service.settings import Settings

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "pillow",
    "fastapi",
    "uvicorn",
    "grpcio",
    "aiohttp",
    "psutil",
)
# A single-threaded client near one full core is what limits the result, not the server.
CLIENT_BOUND_CORES = 0.85


def _loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


class Bench:
    def __init__(self, profile: Profile, repository: Path, out: Path, pinning: Pinning | None = None) -> None:
        self.profile = profile
        self.repository = repository
        self.out = out
        self.pinning = pinning
        self.logs = Path(tempfile.gettempdir()) / "effnet-bench-logs"  # server logs stay out of results/
        self.runs: list[dict[str, Any]] = []
        self.refs: dict[str, Any] = {}
        # The cores the references and the servers get: the limits are computed for these.
        self.cores = len(pinning.server) if pinning else psutil.cpu_count() or 1
        self.full_hd = make_jpegs(FULL_HD)
        self._native: dict[str, list[bytes]] = {}
        self._run_loop = _loop_runner()

    # ------------------------------------------------------------------ helpers
    def spec(self, model: str) -> ModelSpec:
        return ModelSpec.from_file(self.model_dir(model) / "model.json")

    def model_dir(self, model: str) -> Path:
        versions = sorted(
            (self.repository / model).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1
        )
        return versions[-1]

    def native(self, model: str) -> list[bytes]:
        if model not in self._native:
            crop = self.spec(model).crop_size
            self._native[model] = make_jpegs((crop, crop))
        return self._native[model]

    def bodies(self, model: str, size: str) -> list[bytes]:
        return self.full_hd if size == "1080p" else self.native(model)

    def measure(
        self,
        target: Target,
        load: LoadSpec,
        record: dict[str, Any],
        server: servers.ServerProcess,
        model: str,
    ) -> dict[str, Any]:
        waited, other_before = wait_for_quiet(server.pid, self.profile.quiet_wait_s)
        before = server.batch_histogram(model) if record["server"] == "service" else {}
        with self.pinning.on_client_cores() if self.pinning else contextlib.nullcontext():
            result = self._run_loop(run_load(target, load, server.pid))
        entry = {
            **record,
            "model": model,
            "protocol": target.name,
            "mode": load.mode,
            "concurrency": load.concurrency if load.mode == "closed" else None,
            "rate": load.rate if load.mode == "open" else None,
            "duration_s": load.duration_s,
            **result.summary,
            "cpu": result.cpu.as_dict(),
            "client_bound": result.cpu.client >= CLIENT_BOUND_CORES,
            "waited_for_quiet_s": round(waited, 1),
            "other_cores_before": round(other_before, 2),
        }
        if record["server"] == "service":
            entry["batch_sizes"] = servers.histogram_delta(before, server.batch_histogram(model))
        self.runs.append(entry)
        p50 = entry["p50_ms"]
        log.info(
            "%-7s %-4s %-9s %-5s %-6s %s c=%-3s rate=%-6s -> %6.1f img/s p50=%s ms p99=%s ms client=%.2f "
            "server=%s other=%s %s",
            record["server"], model, target.name, record["input"], load.mode, record["settings"] or "",
            entry["concurrency"],
            entry["rate"] and f"{load.rate:.0f}", entry["throughput"], p50 and f"{p50:.1f}",
            entry["p99_ms"] and f"{entry['p99_ms']:.1f}", result.cpu.client, result.cpu.server and
            f"{result.cpu.server:.2f}", result.cpu.other and f"{result.cpu.other:.2f}",
            {k: v for k, v in entry["statuses"].items() if k != "ok"} or "",
        )  # fmt: skip
        return entry

    def closed(self, c: int, duration: float | None = None) -> LoadSpec:
        p = self.profile
        return LoadSpec("closed", duration or p.duration_s, p.warmup_s, concurrency=c)

    # ------------------------------------------------------------------ references
    def references(self, model: str, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
        spec = self.spec(model)
        path = self.model_dir(model) / "model.onnx"
        budget = self.profile.ref_budget_s
        log.info("references for %s (batch sizes %s)", model, batch_sizes)
        wait_for_quiet(None, self.profile.quiet_wait_s)
        pre = PreprocessSpec.from_model_spec(spec)
        ref: dict[str, Any] = {
            "crop_size": spec.crop_size,
            "gmacs": spec.gmacs,
            "parameters": spec.parameters,
            "preprocess_1080p": references.preprocess_cost(self.full_hd, pre, budget),
            "preprocess_native": references.preprocess_cost(self.native(model), pre, budget),
            "bare_ort": references.bare_ort(path, spec.crop_size, batch_sizes, self.cores, False, budget),
            "bare_ort_1thread": references.bare_ort(path, spec.crop_size, batch_sizes, 1, False, budget),
            # The same threads spinning between back-to-back runs: bare ORT's fastest batch of one.
            "bare_ort_spinning": references.bare_ort(path, spec.crop_size, (1,), self.cores, True, budget),
            # Whether the service's default spins on this machine (it does unless a CPU quota is set):
            # the one-client inference goal compares it with the bare run of the same policy.
            "service_spinning": Settings().effective_allow_spinning,
        }
        one_thread = ref["bare_ort_1thread"]["batches"].values()
        core_ms = min(b["ms_per_image"] for b in one_thread)
        ref["inference_core_ms"] = core_ms
        ref["inference_cpu_ms"] = min(b["cpu_ms_per_image"] for b in one_thread)
        # Runs of one image and of the CPU's default batch: the better is what the cores give.
        measured = [
            references.pipeline_measured(
                path, self.full_hd, pre, self.cores, run_size, self.profile.duration_s
            )
            for run_size in (1, 4)
        ]
        ref["pipeline_measured_1080p"] = max(measured, key=lambda m: m["images_per_s"])
        ref["pipeline_measured_1080p_sizes"] = measured
        for size in ("1080p", "native"):
            pre = ref[f"preprocess_{size}"]
            ref[f"pipeline_limit_{size}"] = references.pipeline_limit(self.cores, pre["ms"], core_ms)
            # The same from CPU time: what the cores allow when nobody else uses them.
            ref[f"pipeline_limit_{size}_cpu"] = references.pipeline_limit(
                self.cores, pre["cpu_ms"], ref["inference_cpu_ms"]
            )
        log.info(
            "%s: preprocess 1080p %.2f ms, native %.2f ms; inference core %.2f ms/img; "
            "bare ORT best %.1f img/s (bs %d); pipeline limit 1080p %.1f img/s, native %.1f img/s; "
            "from CPU time: preprocess %.2f ms, inference %.2f ms, limit 1080p %.1f img/s",
            model, ref["preprocess_1080p"]["ms"], ref["preprocess_native"]["ms"], core_ms,
            ref["bare_ort"]["best_images_per_s"], ref["bare_ort"]["best_batch"],
            ref["pipeline_limit_1080p"], ref["pipeline_limit_native"], ref["preprocess_1080p"]["cpu_ms"],
            ref["inference_cpu_ms"], ref["pipeline_limit_1080p_cpu"],
        )  # fmt: skip
        self.refs[model] = ref
        return ref

    # ------------------------------------------------------------------ service, b0
    def service_b0(self) -> None:
        p = self.profile
        model = "b0"
        server, grpc_port = servers.service(self.repository, [model], {}, self.logs / "service-b0.log")
        grpc_addr = f"127.0.0.1:{grpc_port}"
        record = {"server": "service", "settings": {}, "input": "1080p"}
        with server:
            url = server.base_url
            peak = 0.0
            for c in p.concurrency:
                target = HttpClassify(url, model, self.full_hd, timings=c == 1)
                entry = self.measure(target, self.closed(c), record, server, model)
                if target.inference_ms:  # the service's own figure: ORT time of the batch it ran in
                    entry["inference_ms_p50"] = round(statistics.median(target.inference_ms), 3)
                peak = max(peak, float(entry["throughput"]))
            pre = PreprocessSpec.from_model_spec(self.spec(model))
            pixel_requests = [v2_pixels_request(model, preprocess(b, pre)) for b in self.full_hd]
            for c in p.grpc_concurrency:
                self.measure(
                    GrpcClassify(grpc_addr, model, self.full_hd), self.closed(c), record, server, model
                )
                self.measure(
                    HttpClassify(url, model, self.native(model)), self.closed(c),
                    {**record, "input": "native"}, server, model,
                )  # fmt: skip
                self.measure(
                    V2Infer(grpc_addr, pixel_requests, "v2-pixels"),
                    self.closed(c), {**record, "input": "pixels"}, server, model,
                )  # fmt: skip
                # The same requests on ModelStreamInfer: what a stream saves per request.
                self.measure(
                    V2Stream(grpc_addr, pixel_requests, "v2-stream-pixels"),
                    self.closed(c), {**record, "input": "pixels"}, server, model,
                )  # fmt: skip
                self.measure(
                    V2Infer(grpc_addr, [v2_image_request(model, b) for b in self.full_hd], "v2-image"),
                    self.closed(c), record, server, model,
                )  # fmt: skip
            for fraction in p.open_loop_fractions:
                load = LoadSpec("open", p.duration_s, p.warmup_s, rate=max(fraction * peak, 1.0))
                entry = self.measure(HttpClassify(url, model, self.full_hd), load, record, server, model)
                entry["offered_fraction"] = fraction

    def naive(
        self, model: str, concurrencies: tuple[int, ...], duration: float | None = None, draft: bool = False
    ) -> None:
        label = "naive+draft" if draft else "naive"
        threads = self.cores if self.pinning else 0  # ORT's default would escape the pinning
        server = servers.naive(self.model_dir(model), self.logs / f"{label}-{model}.log", draft, threads)
        self._reference(server, label, model, concurrencies, duration)

    def floor(self, model: str, concurrencies: tuple[int, ...]) -> None:
        """The overhead floor (bench/floor_server.py): the pipeline limit less what HTTP costs."""
        server = servers.floor(self.model_dir(model), self.logs / f"floor-{model}.log")
        self._reference(server, "floor", model, concurrencies)

    def _reference(
        self,
        server: servers.ServerProcess,
        label: str,
        model: str,
        concurrencies: tuple[int, ...],
        duration: float | None = None,
    ) -> None:
        """A reference server's closed-loop runs with 1080p JPEGs over HTTP."""
        record = {"server": label, "settings": {}, "input": "1080p"}
        with server:
            for c in concurrencies:
                target = HttpClassify(server.base_url, model, self.full_hd)
                self.measure(target, self.closed(c, duration), record, server, model)

    # ------------------------------------------------------------------ tuning
    def tuning(self) -> None:
        p = self.profile
        model, c = "b0", p.saturation_concurrency
        results: list[tuple[dict[str, str], float]] = []

        def trial(settings: dict[str, str], tag: str) -> float:
            server, _ = servers.service(self.repository, [model], settings, self.logs / "service-tuning.log")
            with server:
                record = {"server": "service", "settings": settings, "input": "1080p", "tuning": tag}
                target = HttpClassify(server.base_url, model, self.full_hd)
                entry = self.measure(target, self.closed(c), record, server, model)
            return float(entry["throughput"])

        base = trial({}, "baseline")
        for settings in p.tuning:
            results.append((settings, trial(settings, "change")))
        if p.combine_best:
            best: dict[str, tuple[str, float]] = {}
            for settings, throughput in results:
                ((key, value),) = settings.items()
                if throughput > base * 1.03 and throughput > best.get(key, ("", 0.0))[1]:
                    best[key] = (value, throughput)
            if best:
                trial({k: v for k, (v, _) in best.items()}, "combined")
        trial({}, "baseline-again")  # drift of the machine over the tuning runs

    # ------------------------------------------------------------------ other variants
    def variants(self) -> None:
        p = self.profile
        names = [v for v, *_ in p.variants]
        chart = [v for v in ALL_VARIANTS if (self.repository / v).is_dir()] if p.paper_chart else []
        models = sorted(set(names) | set(chart), key=ALL_VARIANTS.index)
        if not models:
            return
        server, _ = servers.service(self.repository, models, {}, self.logs / "service-variants.log")
        record = {"server": "service", "settings": {}, "input": "1080p"}
        with server:
            for model, concurrencies, _naive_c, duration in p.variants:
                for c in concurrencies:
                    self.measure(HttpClassify(server.base_url, model, self.full_hd), self.closed(c, duration),
                                 record, server, model)  # fmt: skip
            for model in chart:
                # Past b3 batching gains nothing: 4 clients keep preprocessing and inference busy.
                small = ALL_VARIANTS.index(model) <= ALL_VARIANTS.index("b3")
                load = self.closed(8 if small else 4, 6.0 if small else 10.0)
                target = HttpClassify(server.base_url, model, self.full_hd)
                self.measure(target, load, {**record, "chart": True}, server, model)
        for model, _c, naive_c, duration in p.variants:
            if naive_c:
                self.naive(model, (naive_c,), duration)

    def chart_references(self) -> None:
        """Bare ORT batch 1 (default threads) for every variant the chart shows."""
        for model in ALL_VARIANTS:
            if model in self.refs or not (self.repository / model).is_dir():
                continue
            spec = self.spec(model)
            bare = references.bare_ort(
                self.model_dir(model) / "model.onnx",
                spec.crop_size,
                (1,),
                self.cores,
                False,
                self.profile.ref_budget_s,
            )
            self.refs[model] = {"crop_size": spec.crop_size, "gmacs": spec.gmacs, "bare_ort": bare}
            log.info("%s: bare ORT bs1 %.1f ms", model, bare["batches"]["1"]["ms_per_batch"])
