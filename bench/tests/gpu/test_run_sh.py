"""bench/gpu/run.sh's steps on the CPU: the loader path, the pre-flight that stops on anything but CUDA,
skips that fail where CUDA is required, a missing wheel part, and the install rehearsal in a clean
CPython 3.12 (skipped where there is none, or no wheels and no PyPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu.carried import WHEELS, read_pins
from bench.gpu.loader import REQUIRED, library_dirs, locate
from bench.gpu.transfer import plan_calls, write_calls

ROOT = Path(__file__).resolve().parents[3]


def test_library_dirs_are_found_under_every_path_entry(tmp_path: Path) -> None:
    image, carried = tmp_path / "image-site", tmp_path / "carried-site"
    for folder in (image / "nvidia/cu13/lib", image / "nvidia/cudnn/lib", carried / "nvidia/cu13/lib"):
        folder.mkdir(parents=True)
    (image / "nvidia/cu13/lib/libcublas.so.13").write_bytes(b"")
    dirs = library_dirs([str(carried), str(image), str(tmp_path / "absent")])
    assert dirs == [
        str(carried / "nvidia/cu13/lib"),
        str(image / "nvidia/cu13/lib"),
        str(image / "nvidia/cudnn/lib"),
    ]
    assert locate(["libcublas.so.13", "libcudnn.so.9"], dirs) == {
        "libcublas.so.13": str(image / "nvidia/cu13/lib/libcublas.so.13"),
        "libcudnn.so.9": None,
    }


def test_with_the_loader_path_set_every_library_of_the_cuda_provider_loads() -> None:
    """This venv's torch brings the same CUDA 13 and cuDNN wheels the device image has."""
    dirs = library_dirs()
    if not all(locate(REQUIRED, dirs).values()):
        pytest.skip("this venv has no CUDA 13 / cuDNN 9 pip wheels")
    probe = "import ctypes, sys; [ctypes.CDLL(lib) for lib in sys.argv[1:]]; print('ok')"
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(dirs)}
    done = subprocess.run(
        [sys.executable, "-c", probe, *REQUIRED], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_the_preflight_stops_with_a_json_reason_when_cuda_is_not_in_use(tmp_path: Path) -> None:
    env = {**os.environ, "LD_LIBRARY_PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu.preflight", "--out", str(tmp_path), "--device", "cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert done.returncode == 2, done.stderr
    assert report["stopped"]["phase"] == "preflight"
    assert "not CUDAExecutionProvider" in report["stopped"]["reason"]
    assert report["preflight"]["provider"] != "CUDAExecutionProvider" and "libraries" in report["preflight"]
    cpu = subprocess.run(
        [sys.executable, "-m", "bench.gpu.preflight", "--out", str(tmp_path / "cpu"), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        cpu.returncode == 0 and json.loads((tmp_path / "cpu/gpu.json").read_text())["preflight"]["output_ok"]
    )


@pytest.mark.parametrize("require", ["0", "1"])
def test_gpu_test_skips_fail_when_cuda_is_required(require: str) -> None:
    env = {**os.environ, "EFFNET_REQUIRE_CUDA": require}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if require == "0":
        assert done.returncode == 0 and "skipped" in done.stdout, done.stdout[-1500:]
    else:
        assert done.returncode == 1, done.stdout[-1500:]
        assert "EFFNET_REQUIRE_CUDA=1 makes that a failure: no NVIDIA GPU visible" in done.stdout


def test_a_missing_wheel_part_stops_the_check_call_with_gpu_json(tmp_path: Path) -> None:
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(3000))
    write_calls(plan_calls([wheel], capacity=1000), tmp_path / "calls")
    stash = tmp_path / "stash"
    stash.mkdir()
    for call in ("call-1", "call-3"):  # call 2 never made
        for item in (tmp_path / "calls" / call).iterdir():
            (stash / item.name).write_bytes(item.read_bytes())
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "bench/gpu/run.sh", "--stash", str(stash), "--out", str(out), "--repository",
         str(tmp_path / "models"), "check"],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert report["stopped"]["phase"] == "install"
    assert "big-1.0-py3-none-any.whl.part01 (call 2 of 3) is not in" in report["stopped"]["reason"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_carried_wheels_install_into_a_clean_python312_and_the_server_imports(tmp_path: Path) -> None:
    from bench.gpu.rehearsal import find_python312, wheel_source

    if find_python312() is None:
        pytest.skip("no CPython 3.12 on this machine")
    try:
        wheel_source()
    except Exception:
        fetched = subprocess.run(
            ["bash", "bench/gpu/prepare.sh", "--download-only"], cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "PYTHON": sys.executable}, timeout=300,
        )  # fmt: skip
        if fetched.returncode:
            pytest.skip(f"the carried wheels could not be downloaded (offline?): {fetched.stderr[-300:]}")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu.rehearsal", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    report = json.loads((tmp_path / "gpu.json").read_text())
    if report["phases"]["rehearsal"].startswith("skipped"):
        pytest.skip(report["phases"]["rehearsal"])
    assert done.returncode == 0, done.stdout + done.stderr
    rehearsal = report["rehearsal"]
    assert rehearsal["carried_installed"] == len(read_pins(WHEELS))
    assert "/site/onnxruntime/" in rehearsal["modules"]["onnxruntime"]
    assert "/site/fastapi_offline/" in rehearsal["modules"]["fastapi_offline"]
    assert not any(p.startswith("torch") for p in rehearsal["image_packages"])  # the image stand-in is lean
