"""The version locks in requirements/ agree with pyproject.toml, and the CPU and GPU runtimes never meet.

make and CI install the locks with `pip install --no-deps -r` (tools/lock.sh, Makefile): a lock that
lost a pin, or one that carried both onnxruntime wheels, would only show on a fresh machine."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match:
            found[_name(match.group(1))] = match.group(2)
    return found


def lock(name: str) -> dict[str, str]:
    return pins((LOCKS / name).read_text().splitlines())


def declared(*extras: str) -> dict[str, str]:
    lines = list(PROJECT["dependencies"])
    for extra in extras:
        lines += PROJECT["optional-dependencies"][extra]
    return pins(lines)


def without_cpu_runtime(requirements: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in requirements.items() if name != "onnxruntime"}


@pytest.mark.parametrize(
    ("lock_name", "extras"),
    [
        ("serve.txt", ()),
        ("export.txt", ("export",)),
        ("test.txt", ("export", "dev")),
        ("all.txt", ("export", "dev", "bench", "deploy")),
        ("serve-gpu.txt", ("gpu",)),
        ("export-gpu.txt", ("export", "gpu")),
        ("test-gpu.txt", ("export", "dev", "gpu")),
    ],
)
def test_each_lock_pins_what_pyproject_pins(lock_name: str, extras: tuple[str, ...]) -> None:
    locked = lock(lock_name)
    wanted = declared(*extras)
    if lock_name.endswith("-gpu.txt"):
        wanted = without_cpu_runtime(wanted)
    assert {name: locked.get(name) for name in wanted} == wanted
    assert "triton" not in locked  # torch's GPU compiler: 0.9 GB that exporting to ONNX never uses


def test_serving_locks_have_no_torch() -> None:
    for name in ("serve.txt", "serve-gpu.txt"):
        assert not {"torch", "torchvision", "timm"} & set(lock(name)), name


@pytest.mark.parametrize("stem", ["serve", "export", "test"])
def test_gpu_locks_differ_from_cpu_only_by_the_runtime(stem: str) -> None:
    cpu, gpu = lock(f"{stem}.txt"), lock(f"{stem}-gpu.txt")
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu  # one package, two wheels: never both
    shared = set(cpu) & set(gpu)
    assert {name: cpu[name] for name in shared} == {name: gpu[name] for name in shared}
    assert set(cpu) - set(gpu) == {"onnxruntime"}
    # What the GPU side adds is the gpu extra and what it depends on, nothing of the CPU side's.
    assert set(pins(PROJECT["optional-dependencies"]["gpu"])) <= set(gpu) - set(cpu)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("device", "venv", "suffix"), [("cpu", ".venv", ""), ("gpu", ".venv-gpu", "-gpu")])
def test_make_installs_the_device_lock_into_the_device_venv(device: str, venv: str, suffix: str) -> None:
    plan = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "test", f"DEVICE={device}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"{venv}/bin/python -m pip install --no-deps --requirement requirements/export{suffix}.txt" in plan
    assert f"{venv}/bin/python -m pip install --no-deps --requirement requirements/test{suffix}.txt" in plan
    assert "--quiet" not in plan  # a first install takes minutes: show its progress


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_an_edited_pyproject_reinstalls_but_does_not_re_export(tmp_path: Path) -> None:
    """The repository waits for the venv (order-only), it is not made from it: an edit to pyproject.toml
    reinstalls, and leaves the exported models alone."""
    venv, repository = tmp_path / "venv", tmp_path / "repository"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    (venv / ".installed-serve").touch()
    repository.mkdir()
    (repository / ".complete").touch()
    plan = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "--no-print-directory", "models", f"VENV={venv}",
         f"REPOSITORY={repository}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pip install --no-deps --requirement requirements/export.txt" in plan
    assert "models.export" not in plan and "models.cascade" not in plan
