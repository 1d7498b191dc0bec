"""`make check-image`: build the container image with buildah (no Docker engine), run it, check it.

1. The base image the Dockerfile names is pulled; where no registry is reachable, a stand-in is built
   from Debian packages under the same name, and the report says so (docker/image_build.py).
2. The cpu image (`--build-arg FLAVOR=cpu`) is built with VARIANTS=lite0 (real ImageNet weights offline).
3. The image's entrypoint runs as the image's user, listening on loopback only, and is checked:
   - ready (/readyz 200) within the HEALTHCHECK's start period;
   - a real photo (scikit-image's chelsea, a tabby cat) classified as a cat over HTTP and over gRPC;
   - the server process runs with a non-root uid, the one the image's USER names;
   - nothing in the model directory can be written or created by that user;
   - the HEALTHCHECK command exits 0 inside the container;
   - SIGTERM to the server gives exit code 0.
4. Image size, build time and time from start to ready are reported; the storage is removed.

Run it as root with the project's venv (the gRPC check uses the stubs `make proto` generates).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # docker/ is no package; image_build sits beside

from image_build import (  # noqa: E402
    DEBIAN_MIRROR,
    ROOT,
    Buildah,
    CheckFailed,
    build_image,
    buildah_workspace,
    dockerfile_arg_default,
    human_bytes,
    log,
    provide_base_image,
)

# ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)
GPU_TARGET = (
    "not built: this check builds FLAVOR=cpu only; the gpu base (ARG CUDA_IMAGE) is out of reach here. "
    "What stays unverified: docs/deploy.md"
)

Classifier = Callable[[int, str, bytes], list[tuple[int, str]]]


# ---------------------------------------------------------------------------------------------------
# Pure helpers (tests/deploy/test_check_image.py)


@dataclass(frozen=True)
class Healthcheck:
    command: list[str]  # argv to run inside the container
    start_period_s: float
    timeout_s: float


def parse_healthcheck(image_config: dict[str, object]) -> Healthcheck:
    """The HEALTHCHECK of a Docker-format image config (durations are in nanoseconds there)."""
    raw = image_config.get("Healthcheck")
    if not isinstance(raw, dict) or not raw.get("Test"):
        raise CheckFailed("the image has no HEALTHCHECK (it is kept only in the docker image format)")
    test = [str(part) for part in raw["Test"]]
    if test[0] == "CMD":
        command = test[1:]
    elif test[0] == "CMD-SHELL":
        command = ["/bin/sh", "-c", " ".join(test[1:])]
    else:
        raise CheckFailed(f"the image's HEALTHCHECK is {test[0]!r}: nothing to run")
    return Healthcheck(
        command=command,
        start_period_s=int(raw.get("StartPeriod") or 0) / 1e9,
        timeout_s=int(raw.get("Timeout") or 30e9) / 1e9,
    )


def image_command(image_config: dict[str, object]) -> list[str]:
    """What `docker run IMAGE` starts: the entrypoint followed by the default command."""
    parts = [*(image_config.get("Entrypoint") or []), *(image_config.get("Cmd") or [])]  # type: ignore[misc]
    if not parts:
        raise CheckFailed("the image has neither ENTRYPOINT nor CMD")
    return [str(part) for part in parts]


def image_env(image_config: dict[str, object], name: str, default: str) -> str:
    for entry in image_config.get("Env") or []:  # type: ignore[attr-defined]
        key, _, value = str(entry).partition("=")
        if key == name:
            return value
    return default


def runs_command(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """Whether a process's command line is `argv`; buildah resolves the program to its full path."""
    return (
        len(cmdline) == len(argv) > 0
        and list(cmdline[1:]) == list(argv[1:])
        and Path(cmdline[0]).name == Path(argv[0]).name
    )


def top1_is_cat(class_ids: Sequence[int]) -> bool:
    return bool(class_ids) and class_ids[0] in CAT_CLASSES


def process_uids(status_text: str) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uid from /proc/PID/status text."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            return tuple(int(part) for part in line.split()[1:])
    raise CheckFailed("no Uid line in /proc/PID/status")


def check_uids(uids: tuple[int, ...], image_user: str) -> None:
    if not uids or 0 in uids:
        raise CheckFailed(f"the server runs with uids {uids}: root")
    wanted = image_user.split(":")[0]
    if wanted.isdigit() and any(uid != int(wanted) for uid in uids):
        raise CheckFailed(f"the server runs with uids {uids}, the image's USER is {image_user}")


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Every process below `pid`, from the parent field of /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name may hold spaces and ')': the fields after the last ')' are fixed.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


# ---------------------------------------------------------------------------------------------------
# Talking to the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chelsea_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def classify_http(port: int, model: str, image: bytes) -> list[tuple[int, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/classify?variant={model}&top_k=3",
        data=image, headers={"Content-Type": "image/jpeg"}, method="POST",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise CheckFailed(f"HTTP /classify answered {exc.code}: {exc.read()[:300]!r}") from exc
    return [(int(p["class_id"]), str(p["label"])) for p in body["results"][0]["predictions"]]


def classify_grpc(port: int, model: str, image: bytes) -> list[tuple[int, str]]:
    import grpc

    sys.path.insert(0, str(ROOT))
    from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc

    request = classifier_pb2.ClassifyRequest(model=model, top_k=3, images=[image])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=60)
        except grpc.RpcError as exc:
            raise CheckFailed(f"gRPC Classify failed: {exc.code().name} {exc.details()}") from exc
    return [(p.class_id, p.label) for p in response.results[0].predictions]


# Runs inside the container as the image's user: every attempt to write below the model directory
# (a new file in each directory, append to each file) must fail.
MODELS_READ_ONLY_PROBE = r"""
import json, os, pathlib, sys
root = pathlib.Path(sys.argv[1])
result = {"uid": os.getuid(), "writable": [], "files": 0}
for path in [root, *root.rglob("*")]:
    try:
        if path.is_dir():
            (path / ".effnet-write-probe").write_bytes(b"x")
        else:
            result["files"] += 1
            open(path, "ab").close()
        result["writable"].append(str(path))
    except OSError:
        pass
print(json.dumps(result))
"""


# ---------------------------------------------------------------------------------------------------
# The container under test


@dataclass
class Report:
    base_image: str = ""
    base_source: str = ""
    torch_index: str = ""
    ca_bundle: str | None = None
    target: str = ""
    variants: str = ""
    base_seconds: float = 0.0
    build_seconds: float = 0.0
    image_bytes: int = 0
    start_to_ready_seconds: float = 0.0
    stop_seconds: float = 0.0
    checks: dict[str, str] = field(default_factory=dict)
    gpu_target: str = GPU_TARGET

    def passed(self, name: str, detail: str) -> None:
        self.checks[name] = detail
        log(f"ok  {name}: {detail}")


class ContainerRun:
    """The image's entrypoint running under `buildah run`, as `docker run` would start it, on loopback."""

    def __init__(self, buildah: Buildah, image: str) -> None:
        self.buildah = buildah
        self.config = buildah.image_config(image)
        self.health = parse_healthcheck(self.config)
        self.argv = image_command(self.config)
        self.user = str(self.config.get("User") or "")
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {"EFFNET_HOST": "127.0.0.1", "EFFNET_HTTP_PORT": str(self.http_port),
               "EFFNET_GRPC_PORT": str(self.grpc_port)}  # fmt: skip
        self.env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
        self.container = buildah.run("from", "--pull=never", image).strip()
        self.runner: subprocess.Popen[bytes] | None = None
        self.server_pid = 0
        self.started = 0.0

    def in_container(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the same container, as the image's user, with the server's settings."""
        return subprocess.run(
            self.buildah.command("run", "--network", "host", *self.env_flags, self.container, "--", *argv),
            env=self.buildah.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def start(self) -> None:
        user = self.user or "root"
        log(f"starting {self.argv} as USER {user}, HTTP :{self.http_port}, gRPC :{self.grpc_port}")
        self.started = time.monotonic()
        command = ["run", "--network", "host", *self.env_flags, self.container, "--", *self.argv]
        self.runner = subprocess.Popen(self.buildah.command(*command), env=self.buildah.env)
        self.server_pid = self._find_server_pid(deadline=self.started + 60)

    def _find_server_pid(self, deadline: float) -> int:
        """The process below `buildah run` that runs the image's command (not a buildah helper)."""
        assert self.runner is not None
        while time.monotonic() < deadline and self.runner.poll() is None:
            for pid in descendants(self.runner.pid):
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
                    is_helper = "buildah" in Path(f"/proc/{pid}/exe").resolve().name
                    if runs_command(cmdline, self.argv) and not is_helper:
                        return pid
            time.sleep(0.1)
        raise CheckFailed(f"no process running {self.argv} appeared below `buildah run`")

    def wait_ready(self) -> float:
        assert self.runner is not None
        deadline = self.started + self.health.start_period_s
        while http_status(f"http://127.0.0.1:{self.http_port}/readyz") != 200:
            if self.runner.poll() is not None:
                raise CheckFailed(f"the server exited with code {self.runner.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"not ready within the HEALTHCHECK start period ({self.health.start_period_s} s)"
                )
            time.sleep(0.2)
        return time.monotonic() - self.started

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the server (what `docker stop` sends PID 1): its exit code and how long it took."""
        assert self.runner is not None
        started = time.monotonic()
        os.kill(self.server_pid, signal.SIGTERM)
        try:
            code = self.runner.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed("the server did not exit within 60 s of SIGTERM") from exc
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.runner is not None and self.runner.poll() is None:
            for pid in [*descendants(self.runner.pid), self.runner.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.runner.wait(timeout=30)


def check_container(run: ContainerRun, model: str, report: Report) -> None:
    run.start()
    report.start_to_ready_seconds = run.wait_ready()
    period = run.health.start_period_s
    report.passed(
        "ready", f"/readyz 200 after {report.start_to_ready_seconds:.1f} s (start period {period:.0f} s)"
    )

    photo = chelsea_jpeg()
    protocols: list[tuple[str, Classifier, int]] = [
        ("classify_http", classify_http, run.http_port),
        ("classify_grpc", classify_grpc, run.grpc_port),
    ]
    for name, classify, port in protocols:
        top = classify(port, model, photo)
        if not top1_is_cat([class_id for class_id, _ in top]):
            raise CheckFailed(
                f"{name}: chelsea (a tabby cat) came back as {top}; expected a class in 281-285"
            )
        report.passed(name, f"chelsea -> {top[0][0]} {top[0][1]!r}")

    uids = process_uids(Path(f"/proc/{run.server_pid}/status").read_text())
    check_uids(uids, run.user)
    report.passed("non_root", f"server pid {run.server_pid} runs as uid {uids[1]} (USER {run.user})")

    repository = image_env(run.config, "EFFNET_REPOSITORY", "/models")
    probe = run.in_container("python", "-c", MODELS_READ_ONLY_PROBE, repository)
    if probe.returncode != 0:
        raise CheckFailed(f"the read-only probe failed: {probe.stderr[-500:]}")
    found = json.loads(probe.stdout)
    if found["uid"] == 0 or found["writable"] or found["files"] == 0:
        raise CheckFailed(f"{repository} for the image's user: {found}")
    report.passed(
        "models_read_only", f"{repository}: {found['files']} files, none writable by uid {found['uid']}"
    )

    health = run.in_container(*run.health.command, timeout=run.health.timeout_s + 30)
    if health.returncode != 0:
        raise CheckFailed(
            f"HEALTHCHECK {run.health.command} exited {health.returncode}: {health.stderr[-500:]}"
        )
    report.passed("healthcheck", f"{run.health.command} exits 0 inside the container")

    code, report.stop_seconds = run.stop()
    if code != 0:
        raise CheckFailed(f"after SIGTERM the server exited with code {code}, expected 0")
    report.passed("sigterm", f"exit code 0, {report.stop_seconds:.1f} s after SIGTERM")


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target",
        default="cpu",
        choices=["cpu"],
        help="the image flavor, the FLAVOR build argument (gpu's CUDA base cannot be pulled here)",
    )
    parser.add_argument("--variants", default="lite0", help="VARIANTS build argument (default lite0)")
    parser.add_argument("--model", default="lite0", help="the model the photo is classified with")
    parser.add_argument(
        "--torch-index",
        default=os.environ.get("EFFNET_TORCH_INDEX_URL"),
        help="TORCH_INDEX_URL build argument (default: PyTorch's CPU index if reachable, else PyPI)",
    )
    parser.add_argument(
        "--debian-mirror",
        default=os.environ.get("EFFNET_DEBIAN_MIRROR", DEBIAN_MIRROR),
        help="where debootstrap gets a stand-in base's packages",
    )
    parser.add_argument(
        "--workdir-parent",
        default=os.environ.get("EFFNET_IMAGE_TMPDIR"),
        help="where the temporary storage goes (default: the system's temporary directory)",
    )
    parser.add_argument("--build-timeout", type=float, default=2400, help="seconds the build may take")
    parser.add_argument("--report", type=Path, help="also write the report here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the storage for inspection")
    return parser.parse_args(argv)  # fmt: skip


def summary(report: Report, total_seconds: float) -> str:
    return (
        f"  base image      {report.base_image}: {report.base_source} ({report.base_seconds:.0f} s)\n"
        f"  torch index     {report.torch_index}\n"
        f"  CA bundle       {report.ca_bundle or 'none found'}\n"
        f"  build           {report.build_seconds:.0f} s ({report.target}, VARIANTS={report.variants})\n"
        f"  image size      {human_bytes(report.image_bytes)} ({report.image_bytes} bytes, uncompressed)\n"
        f"  start to ready  {report.start_to_ready_seconds:.1f} s\n"
        f"  SIGTERM to exit {report.stop_seconds:.1f} s (exit code 0)\n"
        f"  gpu target      {report.gpu_target}\n"
        f"  total           {total_seconds:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [
        tool
        for tool in ("buildah", "debootstrap")
        if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    ]
    if missing:
        log(f"{' and '.join(missing)} not installed (`make check-image` installs them with apt)")
        return 2
    if os.geteuid() != 0:
        log("buildah with the vfs driver and chroot isolation needs root here")
        return 2

    started = time.monotonic()
    report = Report(target=args.target, variants=args.variants)
    tag = f"localhost/effnet-serve:{args.target}-check"
    with buildah_workspace(args.workdir_parent, args.keep) as buildah:
        run: ContainerRun | None = None
        try:
            report.base_image = dockerfile_arg_default((ROOT / "Dockerfile").read_text(), "PYTHON_IMAGE")
            report.base_source = provide_base_image(buildah, report.base_image, args.debian_mirror)
            report.base_seconds = time.monotonic() - started
            build = build_image(
                buildah, tag, args.target, args.variants, args.torch_index, args.build_timeout
            )
            report.torch_index, report.ca_bundle = build.torch_index, build.ca_bundle
            report.build_seconds, report.image_bytes = build.seconds, build.image_bytes
            run = ContainerRun(buildah, tag)
            check_container(run, args.model, report)
        except (CheckFailed, subprocess.TimeoutExpired, OSError, urllib.error.URLError) as exc:
            log(f"FAILED: {exc}")
            return 1
        finally:
            if run is not None:
                run.kill()
    total = time.monotonic() - started
    if args.report:
        args.report.write_text(
            json.dumps({**asdict(report), "total_seconds": round(total, 1)}, indent=2) + "\n"
        )
    log("PASSED (storage removed)" if not args.keep else "PASSED")
    print(summary(report, total), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
