"""`bench/gpu/run.sh --dry-run` with no steps (the rehearsal, skipped without the carried wheels, then the
check): the device check's flow on the CPU provider, so the script that
only ever runs on a lent GPU machine cannot rot. Not marked `gpu`: it runs in `make test`.

Light on purpose: the session's model repository (b0 already exported), the smallest profile, and no
nested `pytest -m gpu` (the outer run collects those tests itself). Where the install rehearsal has
run (bench/tests/gpu/test_run_sh.py), the flow runs in its clean CPython 3.12 with the carried wheels
and the image's packages only, as on the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dry_run_measures_every_phase(model_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "bench/gpu/run.sh", "--dry-run", "--skip-tests", "--repository", str(model_repository),
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=230,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    assert "stopped" not in report, report["stopped"]
    assert report["preflight"]["provider"] == "CPUExecutionProvider" and report["preflight"]["output_ok"]
    assert report["models"][0] == "b0" and report["budget_s"] > 100
    assert report["bare"]["b0"]["best_images_per_s"] > 0
    assert report["memory"]["b0"]["io_binding"] and report["memory"]["b0"]["buckets"] == [1, 2, 4]
    assert report["memory"]["b0"]["flat"], report["memory"]["b0"]
    nvimgcodec = ["http", "v2_pixels", "v2_stream_pixels", "v2_pixels_x16", "v2_image"]
    for decoder, protocols in (("pillow", ["http"]), ("nvimgcodec", nvimgcodec)):
        for protocol in protocols:
            run = report["service"][decoder][f"b0/{protocol}"]
            assert run["ok"] > 0 and run["images_per_s"] > 0, (decoder, protocol, run)
    # On the CPU provider the nvImageCodec setting falls back to Pillow, and says so.
    assert any("fallback=pillow" in line for line in report["service"]["nvimgcodec"]["backends"])
    assert "b0: service V2 pixels / bare ORT best" in report["figures"]
    assert "b0: service V2 pixels on streams / bare ORT best" in report["figures"]
    assert report["phases"]["bare TF32 on"].startswith("skipped")
    # What the next GPU machine must record, null where the CPU has no such thing.
    assert report["environment"]["cudnn"] is None and "gpu_state" in report["environment"]
    assert report["environment"]["cpu_quota_cores"] is None or report["environment"]["cpu_quota_cores"] > 0
    assert set(report["figures_tf32"]) == set(report["figures"])
    assert set(report["figures_tf32"].values()) == {None}
    assert report["bare"]["b0"]["intra_op_threads"] == 0  # ORT's default: one per core
    assert report["memory"]["b0"]["intra_op_threads"] >= 1
    assert report["service"]["nvimgcodec"]["intra_op_threads"] >= 1
    variants = report["runtime_options"]["b0"]
    assert set(variants) == {
        "bucket_sessions",
        "threads_per_core",
        "one_session",
        "shared_arena",
        "cuda_graphs",
    }
    assert all(v["random_sizes_mean_ms"] > 0 and v["gpu_mib"] is None for v in variants.values()), variants
    split = report["phases"]["service split"]
    assert split == "done" or split == "skipped: the server's settings have no EFFNET_FRONT_PROCESSES"
    assert report["elapsed_s"] < 180
