"""The Dockerfile, .dockerignore and the two helpers the image build runs."""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import subprocess
import threading
import tomllib
from collections.abc import Iterator

import pytest

from .tooling import ROOT, load_docker_helper, require_tool

healthcheck = load_docker_helper("healthcheck")

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = result.setdefault(match[1], [])
        if current is not None:
            current.append(line)
    return result


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for dep in [*project["optional-dependencies"]["export"], *project["optional-dependencies"]["dev"]]:
        name, _, version = dep.partition("==")
        pins[name.split("[")[0]] = version
    return pins


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_image_adds_fp16_of_every_variant() -> None:
    build = "\n".join(stages()["build"])
    assert "--precision fp16 --repository /out/models-gpu" in build
    assert "cp -a /out/models-cpu /out/models-gpu" in build


def test_stages_and_default_target() -> None:
    found = stages()
    assert list(found) == ["build", "base-cpu", "base-gpu", "runtime"], "the last stage is the default"
    assert any("nvidia/cuda:13." in line and "cudnn" in line for line in DOCKERFILE.read_text().splitlines())
    assert "ARG FLAVOR=cpu" in DOCKERFILE.read_text(), "docker build with no arguments makes the cpu image"
    assert stages()["runtime"][0].startswith("FROM base-${FLAVOR} AS runtime")


def test_one_tail_for_both_images_and_only_the_differences_in_the_bases() -> None:
    found = stages()
    for base in ("base-cpu", "base-gpu"):
        joined = "\n".join(found[base])
        for tail_only in ("USER ", "ENTRYPOINT ", "HEALTHCHECK ", "COPY --from=build", "pip install"):
            assert tail_only not in joined, f"{base} repeats the tail's {tail_only.strip()}"
    assert "EFFNET_DEVICE=cpu" in "\n".join(found["base-cpu"])
    gpu = "\n".join(found["base-gpu"])
    assert "EFFNET_DEVICE=cuda" in gpu and "CUPY_CACHE_DIR=" in gpu


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_runtime_stage_is_locked_down(flavor: str) -> None:
    stage = "runtime"
    lines = [line.replace("${FLAVOR}", flavor) for line in stages()[stage]]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"{stage}: numeric non-root USER"
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT "))
    # Exec form (a JSON list): the server is PID 1 and gets SIGTERM itself, no shell in between.
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["python", "-m", "service"]
    health = next(line for line in lines if line.startswith("HEALTHCHECK "))
    assert "healthcheck.py" in health and "CMD [" in health
    joined = "\n".join(lines)
    assert f"COPY --from=build /out/models-{flavor} /models" in joined  # gpu: plus the fp16 graphs
    assert "torch" not in joined, "torch belongs to the build stage only"
    assert f"requirements-{flavor}.txt" in joined
    assert "EFFNET_REPOSITORY=/models" in joined


def test_build_stage_pins_match_pyproject() -> None:
    pins = pyproject_pins()
    build = "\n".join(stages()["build"])
    for name in ("torch", "torchvision", "grpcio-tools"):
        assert f"{name}=={pins[name]}" in build, f"Dockerfile's {name} pin differs from pyproject.toml"
    # The torch index is a build argument (default: PyTorch's CPU wheels); builds that cannot reach it
    # pass the default index instead (`make check-image` does where it must).
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in build
    assert '--index-url "${TORCH_INDEX_URL}" torch==' in re.sub(r"\s+", " ", build)
    assert "python -m service.protogen" in build
    assert "ARG VARIANTS=" in build and "models.export --variant" in build


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        bare = pattern.replace("**/", "")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, bare) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "service/core/engine.py", "models/export.py",
                   "proto/x.proto", "docker/healthcheck.py", "requirements/serve.txt",
                   "requirements/serve-gpu.txt", "requirements/export.txt"):  # fmt: skip
        assert not _ignored(needed, patterns), f"{needed} must reach the build context"
    unwanted_paths = (
        ".venv/bin/python", ".git/HEAD", "models/repository/b0/1/model.onnx",
        "service/_generated/x.py", "tests/unit/test_x.py", "docker/k8s/base/deployment.yaml",
        "docker/check_image.py", "docker/image_build.py",
    )  # fmt: skip
    for unwanted in unwanted_paths:
        assert _ignored(unwanted, patterns), f"{unwanted} must stay out of the build context"


def test_images_install_the_locks_exactly() -> None:
    """Both stages install requirements/'s locks with --no-deps (what make installs) and prove them whole
    with pip check; the runtime gets its flavor's serving lock (test_locks: only one onnxruntime each)."""
    build = re.sub(r"\s+", " ", "\n".join(stages()["build"]))
    assert "requirements/export.txt > /tmp/export-lock.txt" in build
    assert "pip install --no-cache-dir --no-deps -r /tmp/export-lock.txt" in build
    assert "pip install --no-cache-dir --no-deps /src" in build and "pip check" in build
    assert "cp requirements/serve.txt /out/requirements-cpu.txt" in build
    assert "cp requirements/serve-gpu.txt /out/requirements-gpu.txt" in build
    # The lock's torch family is left out: the build's torch comes from TORCH_INDEX_URL.
    dropped = re.search(r"grep -vE '\^\(([^)]*)\)'", build)
    assert dropped is not None and set(dropped[1].split("|")) == {"torch", "torchvision", "nvidia-", "cuda-"}
    runtime = re.sub(r"\s+", " ", "\n".join(stages()["runtime"]))
    assert "pip install --no-cache-dir --no-deps -r /tmp/install/requirements-${FLAVOR}.txt" in runtime
    assert "pip install --no-cache-dir --no-deps /tmp/install/*.whl && pip check" in runtime


def test_the_dropped_torch_family_is_all_the_serving_locks_lack_of_the_export_lock() -> None:
    """The export lock less the lines the build drops holds no torch, and keeps every serving pin."""
    export = (ROOT / "requirements" / "export.txt").read_text().splitlines()
    kept = [line for line in export if not re.match(r"^(torch|torchvision|nvidia-|cuda-)", line)]
    names = {line.split("==")[0] for line in kept if "==" in line and not line.startswith(" ")}
    assert not {"torch", "torchvision"} & names
    serve = (ROOT / "requirements" / "serve.txt").read_text().splitlines()
    serving = {line.split("==")[0] for line in serve if "==" in line and not line.startswith(" ")}
    assert serving <= names, serving - names


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8000/readyz"),
        ({"EFFNET_HOST": "0.0.0.0", "EFFNET_HTTP_PORT": "9000"}, "http://127.0.0.1:9000/readyz"),
        ({"EFFNET_HOST": "10.1.2.3"}, "http://10.1.2.3:8000/readyz"),
        ({"EFFNET_HOST": "::1"}, "http://[::1]:8000/readyz"),
    ],
)
def test_healthcheck_url(env: dict[str, str], url: str) -> None:
    assert healthcheck.readyz_url(env) == url


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def readyz_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readyz(
    readyz_server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch, status: int, exit_code: int
) -> None:
    monkeypatch.setattr(_Readyz, "status", status)
    monkeypatch.setenv("EFFNET_HOST", "127.0.0.1")
    monkeypatch.setenv("EFFNET_HTTP_PORT", str(readyz_server.server_address[1]))
    assert healthcheck.main() == exit_code


def test_healthcheck_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("EFFNET_HTTP_PORT", str(port))
    assert healthcheck.main() == 1
