"""The package as a user gets it: the wheel, built from this tree, installed into a clean venv with the
serving lock only (no export or dev extras), serves a repository with the `effnet-serve` command.

pip fills the venv from its cache and find-links (the packages are the shared venv's, so nothing new is
downloaded on a machine that ran `make test`); about a minute here, nearly all of it pip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, free_ports
from tests.tiny_model import png, write_model

pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the serving lock and the wheel, nothing else (pip runs from this interpreter)."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the wheel is made of, so that no build/ or egg-info is left in the tree
    # (nor an old build/lib reused) and an exported repository is never packed.
    source = work / "source"
    skip = shutil.ignore_patterns("__pycache__", "repository", "*.pyc")
    for folder in ("service", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = work / "wheels"
    # The build backend from this venv (setuptools is in the test lock): no index needed.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", wheels, source, cwd=work)  # fmt: skip
    (wheel,) = wheels.glob("effnet_serve-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--disable-pip-version-check",
    ]
    _run(*pip, "--requirement", ROOT / "requirements" / "serve.txt", cwd=work)
    _run(*pip, wheel, cwd=work)
    return venv


def test_the_wheel_carries_the_command_and_the_generated_grpc_code(serving_venv: Path) -> None:
    python = serving_venv / "bin" / "python"
    probe = (
        "import importlib.util as u, service._generated.effnet.v1.classifier_pb2, service.settings as s;"
        "print(s.__file__);"
        "print(*[n for n in ('torch', 'grpc_tools', 'pytest', 'onnxscript') if u.find_spec(n)])"
    )
    where, present = _run(python, "-c", probe, cwd=serving_venv).stdout.splitlines()
    assert where.startswith(str(serving_venv)), "the test must run the installed wheel, not this tree"
    assert present == ""  # serving only: no exporter, no protoc, no test tools
    assert (serving_venv / "bin" / "effnet-serve").is_file()


def test_export_without_the_extra_names_the_extra(serving_venv: Path) -> None:
    done = subprocess.run(
        [serving_venv / "bin" / "effnet-serve", "export", "--variant", "b0"],
        cwd=serving_venv, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "effnet-serve[export]" in done.stderr and "Traceback" not in done.stderr
    assert "needs models" not in done.stderr  # a third-party exporter is missing, not our own code


@pytest.fixture
def installed_server(
    serving_venv: Path, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    repository = tmp_path / "repository"
    write_model(repository, "tiny")
    http_port, grpc_port = free_ports(2)
    log_path = tmp_path / "server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("EFFNET_", "PYTHON"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [serving_venv / "bin" / "effnet-serve", "serve", "--repository", repository,
             "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{http_port}", process, log_path
    finally:
        process.terminate()
        process.wait(30)


def test_effnet_serve_serves_a_repository(
    installed_server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, process, log_path = installed_server
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"not ready in 60 s:\n{log_path.read_text()}"
        time.sleep(0.2)
    answer = httpx.post(
        f"{url}/classify?top_k=1", content=png((250, 5, 5)), headers={"content-type": "image/png"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["predictions"][0]["label"] == "red"
    # Once ready, one line tells a person where to go.
    deadline = time.monotonic() + 10
    while f"open {url}/" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (
        [line for line in log_path.read_text().splitlines() if " open http" in line]
        == [line for line in log_path.read_text().splitlines() if line.endswith(f"open {url}/")]
        != []
    )
    process.terminate()
    assert process.wait(30) == 0


def test_the_switch_to_onnxruntime_gpu(serving_venv: Path, tmp_path: Path) -> None:
    """The switch README.md documents, done to the serving venv (last in this module: it changes the
    venv): onnxruntime out first, then onnxruntime-gpu at the GPU lock's pin. One `onnxruntime` package is
    left, it offers CUDA, and on a machine without a GPU the server still serves, on the CPU."""
    python = serving_venv / "bin" / "python"
    locked = (ROOT / "requirements" / "serve-gpu.txt").read_text().splitlines()
    (pin,) = [line for line in locked if line.startswith("onnxruntime-gpu==")]
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    _run(*pip, "uninstall", "--yes", "onnxruntime", cwd=tmp_path)
    _run(*pip, "install", "--no-deps", pin, cwd=tmp_path)
    probe = (
        "import importlib.metadata as m, onnxruntime as ort;"
        "names = sorted(d.metadata['Name'].lower() for d in m.distributions());"
        "print([n for n in names if n.startswith('onnxruntime')]);"
        "print('CUDAExecutionProvider' in ort.get_available_providers())"
    )
    runtimes, offers_cuda = _run(python, "-c", probe, cwd=tmp_path).stdout.splitlines()
    assert runtimes == "['onnxruntime-gpu']" and offers_cuda == "True"
    repository = tmp_path / "repository"
    write_model(repository, "tiny")
    http_port, grpc_port = free_ports(2)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [serving_venv / "bin" / "effnet-serve", "serve", "--repository", repository,
             "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while f"open {url}/" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        model = httpx.get(f"{url}/v1/models/tiny", timeout=10).json()
        on_cpu_machine = not Path("/dev/nvidiactl").exists()
        assert model["provider"] == "CPUExecutionProvider" or not on_cpu_machine  # no GPU: it fell back
        answer = httpx.post(
            f"{url}/classify?top_k=1",
            content=png((5, 250, 5)),
            headers={"content-type": "image/png"},
            timeout=10,
        )
        assert answer.json()["results"][0]["predictions"][0]["label"] == "green"
    finally:
        process.terminate()
        process.wait(30)
