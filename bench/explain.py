"""What the explain outputs cost (models/heads.py), measured in the same run as everything else.

1. Graph: bare ONNX Runtime (one thread) on the b0 graph with the outputs and on the same graph with
   them stripped, in alternating rounds: not asking (logits/probabilities only), asking `features`,
   asking the top-1 and top-5 maps. ONNX Runtime runs every node whatever is asked (measured), so "not
   asking" is what the added nodes cost at their default of no map.
2. Service: one server holding `b0` (with the outputs) and `b0-plain` (its graph stripped, as a model
   exported before them), 1080p JPEG bodies, closed loop, alternating rounds: /classify on each,
   /classify?explain=true (the top-5 maps) and /embed.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from bench import servers
from bench.references import _timed_runs
from bench.targets import HttpClassify
from models.heads import strip_explain_outputs
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec

if TYPE_CHECKING:
    from bench.harness import Bench

ROUNDS = 3
GRAPH_ROUNDS = 8
CONCURRENCY = 4
GRAPH_CASES = ("plain graph", "not asked", "features", "cam top-1", "cam top-5")
SERVICE_CASES = ("plain graph", "not asked", "explain=true (top-5 maps)", "embed")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def graph_cost(
    model_path: Path, crop: int, budget_s: float, batch_sizes: tuple[int, ...] = (1, 4)
) -> dict[str, Any]:
    """Median ms per batch of each case and its ratio to the plain graph, per batch size."""
    full = onnx.load(str(model_path))
    with_outputs, plain = _session(full), _session(strip_explain_outputs(full))
    classes = with_outputs.get_outputs()[0].shape[1]
    most = min(5, classes) if isinstance(classes, int) else 5  # "top-5": fewer for a model of fewer classes
    result: dict[str, Any] = {}
    for size in batch_sizes:
        pixels = np.random.default_rng(0).integers(0, 256, (size, 3, crop, crop), dtype=np.uint8)
        top = lambda k: np.full((1, k), -1, np.int64)  # noqa: E731
        calls = {
            "plain graph": partial(plain.run, ["probabilities"], {"pixels": pixels}),
            "not asked": partial(with_outputs.run, ["probabilities"], {"pixels": pixels}),
            "features": partial(with_outputs.run, ["probabilities", "features"], {"pixels": pixels}),
            "cam top-1": partial(
                with_outputs.run,
                ["probabilities", "cam", "cam_classes"],
                {"pixels": pixels, "cam_class_ids": top(1)},
            ),
            "cam top-5": partial(
                with_outputs.run,
                ["probabilities", "cam", "cam_classes"],
                {"pixels": pixels, "cam_class_ids": top(most)},
            ),
        }
        wall: dict[str, list[float]] = {case: [] for case in GRAPH_CASES}
        cpu: dict[str, list[float]] = {case: [] for case in GRAPH_CASES}
        for _ in range(GRAPH_ROUNDS):  # alternating: a busy spell of the machine hits every case alike
            for case in GRAPH_CASES:
                w, c = _timed_runs(calls[case], budget_s / GRAPH_ROUNDS)
                wall[case] += w
                cpu[case] += c
        wall_ms = {case: statistics.median(values) * 1000 for case, values in wall.items()}
        cpu_ms = {case: statistics.median(values) * 1000 for case, values in cpu.items()}
        result[str(size)] = {
            case: {
                "ms_per_batch": round(wall_ms[case], 3),
                "cpu_ms_per_batch": round(cpu_ms[case], 3),
                # CPU time: one thread's own work, not inflated when other jobs take turns on the cores.
                "vs_plain_cpu": round(cpu_ms[case] / cpu_ms["plain graph"], 4),
                "vs_plain_wall": round(wall_ms[case] / wall_ms["plain graph"], 4),
                "runs": len(wall[case]),
            }
            for case in GRAPH_CASES
        }
    return result


def _plain_copy(repository: Path, model: str, target: Path) -> None:
    """`model` as exported before the outputs existed: stripped graph, two outputs in model.json."""
    shutil.copytree(repository / model, target / model)
    folder = target / f"{model}-plain" / "1"
    shutil.copytree(repository / model / "1", folder)
    onnx.save(strip_explain_outputs(onnx.load(str(folder / MODEL_FILE))), str(folder / MODEL_FILE))
    spec = ModelSpec.from_file(folder / SPEC_FILE)
    digest = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    plain = spec.model_copy(
        update={"name": f"{model}-plain", "outputs": spec.outputs[:2], "onnx_sha256": digest}
    )
    (folder / SPEC_FILE).write_text(plain.to_json())


def service_cost(bench: Bench, model: str = "b0") -> dict[str, Any]:
    """Throughput and p50 of each case (medians over the rounds), and the ratios to the plain graph."""
    p = bench.profile
    with tempfile.TemporaryDirectory(prefix="effnet-explain-") as scratch:
        repository = Path(scratch)
        _plain_copy(bench.repository, model, repository)
        server, _grpc = servers.service(
            repository, [model, f"{model}-plain"], {}, bench.logs / "service-explain.log"
        )
        with server:
            url = server.base_url
            targets = {
                "plain graph": HttpClassify(url, f"{model}-plain", bench.full_hd),
                "not asked": HttpClassify(url, model, bench.full_hd),
                "explain=true (top-5 maps)": HttpClassify(
                    url, model, bench.full_hd, params={"explain": "true"}
                ),
                "embed": HttpClassify(url, model, bench.full_hd, path="/embed"),
            }
            throughput: dict[str, list[float]] = {case: [] for case in SERVICE_CASES}
            p50: dict[str, list[float]] = {case: [] for case in SERVICE_CASES}
            # Server CPU ms per image: what an image costs the server, whatever else runs on the machine.
            cpu_ms: dict[str, list[float]] = {case: [] for case in SERVICE_CASES}
            for round_ in range(ROUNDS):
                for case in SERVICE_CASES:
                    record = {
                        "server": "service",
                        "settings": {"explain": case, "round": round_},
                        "input": "1080p",
                    }
                    entry = bench.measure(targets[case], bench.closed(CONCURRENCY), record, server, model)
                    throughput[case].append(float(entry["throughput"]))
                    if entry["p50_ms"] is not None:
                        p50[case].append(float(entry["p50_ms"]))
                    server_cores = entry["cpu"].get("server")
                    if server_cores and entry["throughput"]:
                        cpu_ms[case].append(1000 * float(server_cores) / float(entry["throughput"]))
    medians = {case: statistics.median(values) for case, values in throughput.items()}
    base = medians["plain graph"]
    cpu = {case: statistics.median(values) if values else 0.0 for case, values in cpu_ms.items()}
    cpu_base = cpu["plain graph"]
    return {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "duration_s": p.duration_s,
        "cases": {
            case: {
                "images_per_s": round(medians[case], 2),
                "vs_plain": round(medians[case] / base, 4) if base else None,
                "p50_ms": round(statistics.median(p50[case]), 2) if p50[case] else None,
                "server_cpu_ms_per_image": round(cpu[case], 2) if cpu[case] else None,
                "cpu_vs_plain": round(cpu[case] / cpu_base, 4) if cpu[case] and cpu_base else None,
                "rounds_images_per_s": [round(v, 2) for v in throughput[case]],
            }
            for case in SERVICE_CASES
        },
    }


def explain_cost(bench: Bench, model: str = "b0") -> dict[str, Any]:
    spec = bench.spec(model)
    graph = graph_cost(bench.model_dir(model) / MODEL_FILE, spec.crop_size, bench.profile.ref_budget_s * 5)
    return {"model": model, "graph_1thread": graph, "service": service_cost(bench, model)}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.explain [--profile quick]`: only this measurement, written to
    bench/results/explain-<profile>.json (`make bench-quick` and `make bench` include it in their own
    JSON under "explain")."""
    import argparse
    import json
    import logging
    import os

    from bench.harness import ROOT, Bench
    from bench.profiles import PROFILES

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    bench = Bench(PROFILES[args.profile], args.repository.resolve(), args.out)
    load_before = os.getloadavg()
    result = explain_cost(bench)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["runs"] = bench.runs
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"explain-{args.profile}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
