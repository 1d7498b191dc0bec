"""The headline figures (ratios) computed from a results dict: what bench/README.md reports."""

from __future__ import annotations

from typing import Any

PAPER_TOP1 = {  # ImageNet top-1 (%), EfficientNet paper (Tan & Le, 2019), Table 2
    "b0": 77.1, "b1": 79.1, "b2": 80.1, "b3": 81.6, "b4": 82.9, "b5": 83.6, "b6": 84.0, "b7": 84.3,
}  # fmt: skip


def select(runs: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def _default_service(runs: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """Our service with default settings, outside the tuning trials and the b0-b7 chart runs."""
    return [
        r
        for r in select(runs, server="service", settings={}, **match)
        if "tuning" not in r and "chart" not in r
    ]


def _peak(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(runs, key=lambda r: r["throughput"]) if runs else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def figures(result: dict[str, Any]) -> dict[str, Any]:
    runs, refs = result["runs"], result["references"]
    out: dict[str, Any] = {"efficiency": {}, "speedup_vs_naive": {}}
    for model, ref in refs.items():
        if "pipeline_limit_1080p" not in ref:
            continue
        peak = _peak(_default_service(runs, model=model, protocol="http", input="1080p", mode="closed"))
        if peak is None:
            continue
        limit = ref["pipeline_limit_1080p"]
        measured = ref.get("pipeline_measured_1080p")
        measured_ips = measured["images_per_s"] if measured else None
        cpu = peak["cpu"]
        # The same limit shrunk to the cores the client left free: how close the server comes to the
        # hardware it actually had. A pinned run (bench/pinning.py) gave the client cores of its own.
        pinned = bool(result.get("meta", {}).get("pinning"))
        free_cores = cpu["cores"] if pinned else max(cpu["cores"] - cpu["client"], 0.1)
        out["efficiency"][model] = {
            "service_images_per_s": round(peak["throughput"], 1),
            "at_concurrency": peak["concurrency"],
            "pipeline_limit": round(limit, 1),
            "efficiency": _ratio(peak["throughput"], limit),
            "efficiency_excluding_client_cpu": _ratio(peak["throughput"], limit * free_cores / cpu["cores"]),
            # The essential work on every core at once with no serving (references.pipeline_measured).
            "pipeline_measured": _round(measured_ips),
            "pipeline_measured_over_limit": _ratio(measured_ips, limit),
            "efficiency_vs_measured_pipeline": _ratio(peak["throughput"], measured_ips),
            "bare_ort_best_images_per_s": round(ref["bare_ort"]["best_images_per_s"], 1),
            **_cpu_efficiency(ref, peak),
            "client_cores": cpu["client"],
            "other_cores": cpu["other"],
        }
        naive = {r["concurrency"]: r for r in select(runs, server="naive", model=model, mode="closed")}
        sweep = _default_service(runs, model=model, protocol="http", input="1080p", mode="closed")
        ours = {r["concurrency"]: r for r in sweep}
        out["speedup_vs_naive"][model] = {
            str(c): _ratio(ours[c]["throughput"], naive[c]["throughput"]) for c in sorted(naive) if c in ours
        }
        if naive:
            best_naive = max(r["throughput"] for r in naive.values())
            out["speedup_vs_naive"][model]["peak_vs_peak"] = _ratio(peak["throughput"], best_naive)
            # Images per core each server used: fair when other jobs took different shares of the
            # machine during the two runs.
            out["speedup_per_server_core"] = out.get("speedup_per_server_core", {})
            out["speedup_per_server_core"][model] = {
                str(c): _ratio(_per_core(ours[c]), _per_core(naive[c])) for c in sorted(naive) if c in ours
            }
    b0 = refs.get("b0")
    c1 = _default_service(runs, model="b0", protocol="http", input="1080p", mode="closed", concurrency=1)
    if b0 and c1:
        # The faster of the service's thread count and one thread: with other jobs on the machine a
        # two-thread run waits for its descheduled thread, which would flatter the service.
        sessions = [b0["bare_ort"], b0.get("bare_ort_1thread", b0["bare_ort"])]
        bs1_ms = min(s["batches"]["1"]["ms_per_batch"] for s in sessions)
        reference_ms = b0["preprocess_1080p"]["ms"] + bs1_ms
        out["latency_c1_b0"] = {
            "service_p50_ms": round(c1[0]["p50_ms"], 2),
            "service_p99_ms": round(c1[0]["p99_ms"], 2),
            "p99_over_p50": _ratio(c1[0]["p99_ms"], c1[0]["p50_ms"]),
            "preprocess_plus_bs1_ms": round(reference_ms, 2),
            "added_ms": round(c1[0]["p50_ms"] - reference_ms, 2),
        }
        out["goals_b0"] = _goals(runs, b0, c1[0], out["efficiency"].get("b0"))
    out["protocols_b0"] = _protocols(runs)
    out["tuning_b0"] = _tuning(runs)
    out["paper_chart"] = {
        r["model"]: {"images_per_s": round(r["throughput"], 2), "top1": PAPER_TOP1.get(r["model"])}
        for r in select(runs, chart=True)
    }
    out["client_bound_runs"] = len([r for r in runs if r["client_bound"]])
    others = sorted(r["cpu"]["other"] for r in runs if r["cpu"].get("other") is not None)
    # Cores busy with work that was neither ours nor the client's: a noisy machine shows here.
    out["other_cores_median"] = others[len(others) // 2] if others else None
    out["client_cores_max"] = max((r["cpu"]["client"] for r in runs), default=None)
    return out


def _goals(
    runs: list[dict[str, Any]], b0: dict[str, Any], c1: dict[str, Any], efficiency: dict[str, Any] | None
) -> dict[str, Any]:
    """The three figures of the one-client and saturation goals, each against its reference from the
    same run: the service's own inference_ms at one client / bare ORT batch 1 with the service's thread
    count and spinning policy (goal <= 1.25; the spinning figure is kept beside it); one-client p50 /
    the naive+draft server's (goal <= 1.0); the 16-client efficiency against the pipeline limit (goal
    >= 0.90), with the overhead floor's own efficiency beside it."""
    spinning = b0.get("bare_ort_spinning")
    # The service's threads and spinning policy (runs from before the policy was recorded did not spin).
    same_policy = spinning if b0.get("service_spinning") and spinning else b0["bare_ort"]
    bare_bs1 = same_policy["batches"]["1"]["ms_per_batch"]
    inference = c1.get("inference_ms_p50")
    draft = select(runs, server="naive+draft", model="b0", mode="closed", concurrency=1)
    draft_p50 = draft[0]["p50_ms"] if draft else None
    eff = efficiency["efficiency"] if efficiency else None
    floor = select(runs, server="floor", model="b0", mode="closed", concurrency=16)
    ours16 = _default_service(runs, model="b0", protocol="http", input="1080p", mode="closed", concurrency=16)
    floor_ips = floor[0]["throughput"] if floor else None
    goals = {
        "inference_ms_c1": inference,
        "bare_bs1_same_threads_ms": round(bare_bs1, 3),
        "bare_bs1_spins": same_policy is spinning,
        "inference_over_bare": _ratio(inference, bare_bs1),
        "bare_bs1_spinning_ms": round(spinning["batches"]["1"]["ms_per_batch"], 3) if spinning else None,
        "p50_c1_ms": round(c1["p50_ms"], 2),
        "naive_draft_p50_c1_ms": None if draft_p50 is None else round(draft_p50, 2),
        "p50_over_naive_draft": _ratio(c1["p50_ms"], draft_p50),
        "efficiency_16": eff,
        # The overhead floor (bench/floor_server.py): how much of the limit HTTP itself leaves here,
        # and how much of that our service reaches.
        "floor_images_per_s_16": None if floor_ips is None else round(floor_ips, 1),
        "floor_efficiency_16": _ratio(floor_ips, b0.get("pipeline_limit_1080p")),
        "service_over_floor_16": _ratio(ours16[0]["throughput"] if ours16 else None, floor_ips),
    }
    goals["met"] = {
        "inference_within_1.25x_bare": goals["inference_over_bare"] is not None
        and goals["inference_over_bare"] <= 1.25,
        "p50_at_or_below_naive_draft": goals["p50_over_naive_draft"] is not None
        and goals["p50_over_naive_draft"] <= 1.0,
        "efficiency_at_least_0.90": eff is not None and eff >= 0.90,
    }
    return goals


def _cpu_efficiency(ref: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """The same comparison in CPU time, which a shared machine does not distort: CPU ms the server
    spent per image against the single-thread CPU ms of preprocessing + inference alone."""
    limit = ref.get("pipeline_limit_1080p_cpu")
    server = peak["cpu"].get("server")
    if limit is None or not server or not peak["throughput"]:
        return {}
    essential = ref["preprocess_1080p"]["cpu_ms"] + ref["inference_cpu_ms"]
    spent = server * 1000.0 / peak["throughput"]
    return {
        "pipeline_limit_quiet": round(limit, 1),
        "efficiency_vs_quiet_limit": _ratio(peak["throughput"], limit),
        "essential_cpu_ms_per_image": round(essential, 2),
        "server_cpu_ms_per_image": round(spent, 2),
        "cpu_efficiency": _ratio(essential, spent),
        "server_cores": server,
    }


def _protocols(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each protocol/input against HTTP /classify with a 1080p JPEG, at the same concurrency."""
    table: dict[str, Any] = {}
    http = {r["concurrency"]: r for r in _default_service(runs, model="b0", protocol="http", input="1080p",
                                                           mode="closed")}  # fmt: skip
    for name, protocol, input_ in (
        ("grpc", "grpc", "1080p"),
        ("v2_image", "v2-image", "1080p"),
        ("v2_pixels", "v2-pixels", "pixels"),
        ("v2_stream_pixels", "v2-stream-pixels", "pixels"),
        ("http_native_jpeg", "http", "native"),
    ):
        for r in _default_service(runs, model="b0", protocol=protocol, input=input_, mode="closed"):
            base = http.get(r["concurrency"])
            if base is None:
                continue
            table[f"{name}@c{r['concurrency']}"] = {
                "images_per_s": round(r["throughput"], 1),
                "http_images_per_s": round(base["throughput"], 1),
                "throughput_ratio": _ratio(r["throughput"], base["throughput"]),
                "p50_ms": round(r["p50_ms"], 2),
                "http_p50_ms": round(base["p50_ms"], 2),
                "p50_delta_ms": round(r["p50_ms"] - base["p50_ms"], 2),
            }
    return table


def _per_core(run: dict[str, Any]) -> float | None:
    server = run["cpu"].get("server")
    return run["throughput"] / server if server else None


def _tuning(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    trials = [r for r in runs if "tuning" in r]
    baselines = [r["throughput"] for r in trials if r["tuning"].startswith("baseline")]
    base = sum(baselines) / len(baselines) if baselines else None
    per_core = [_per_core(r) for r in trials if r["tuning"].startswith("baseline")]
    base_per_core = sum(p for p in per_core if p) / len(per_core) if per_core and all(per_core) else None
    return [
        {
            "trial": r["tuning"],
            "settings": r["settings"],
            "images_per_s": round(r["throughput"], 1),
            "vs_baseline": _ratio(r["throughput"], base),
            # Images per second of server CPU: robust to other jobs taking cores (spinning counts as cost).
            "images_per_server_core": _per_core(r) and round(_per_core(r) or 0.0, 1),
            "per_core_vs_baseline": _ratio(_per_core(r), base_per_core),
            "p50_ms": r["p50_ms"] and round(r["p50_ms"], 1),
            "p99_ms": r["p99_ms"] and round(r["p99_ms"], 1),
            "server_cores": r["cpu"]["server"],
            "client_cores": r["cpu"]["client"],
            "batch_sizes": r.get("batch_sizes"),
        }
        for r in trials
    ]
