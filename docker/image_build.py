"""Build the image with buildah, no Docker engine: a throw-away vfs storage root, chroot isolation.

Used by docker/check_image.py (`make check-image`). Where the Dockerfile's base image cannot be pulled
(no registry reachable), a stand-in is built from Debian packages and tagged with the same name; where
the PyTorch CPU wheel index cannot be reached, torch comes from the default index; the host's CA bundle
is mounted read-only into every RUN of the build, for TLS through a proxy only the host trusts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_INDEX = "https://pypi.org/simple"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# Where the CA bundle is mounted in the build, and where the stand-in base keeps its Python.
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STANDIN_VENV = "/opt/standin-python"
STANDIN_LABEL = "org.effnet-serve.stand-in"


class CheckFailed(Exception):
    """A build or check step failed: the message says which and why."""


def log(message: str) -> None:
    print(f"check-image: {message}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Pure helpers (tests/deploy/test_check_image.py)


def dockerfile_arg_default(dockerfile_text: str, name: str) -> str:
    """The default value of a global `ARG name=value` in a Dockerfile."""
    match = re.search(rf"^ARG\s+{re.escape(name)}=(\S+)\s*$", dockerfile_text, re.MULTILINE)
    if match is None:
        raise CheckFailed(f"the Dockerfile declares no `ARG {name}=...` with a default")
    return match[1].strip("\"'")


def qualified_image_name(name: str) -> str:
    """Docker's normalisation: `python:3.11` -> `docker.io/library/python:3.11`."""
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def debian_suite(image_name: str) -> str:
    """The Debian release a `...-slim-bookworm`-style tag names (the stand-in is built from it)."""
    return next((s for s in ("trixie", "bookworm", "bullseye") if s in image_name), "bookworm")


def mounts_below(directory: Path, mountinfo: str) -> list[str]:
    """Mount points at or below `directory` in /proc/self/mountinfo text, deepest first."""
    prefix = str(directory).rstrip("/")
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
            if point == prefix or point.startswith(prefix + "/"):
                points.add(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def layer_chain_size(layers: list[dict[str, object]], top: str) -> int:
    """Sum of `diff-size` from layer `top` down its parents (containers/storage's layers.json)."""
    by_id = {str(layer["id"]): layer for layer in layers}
    total, current = 0, top
    while current:
        layer = by_id[current]
        total += int(layer.get("diff-size") or 0)  # type: ignore[call-overload]
        current = str(layer.get("parent") or "")
    return total


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


# ---------------------------------------------------------------------------------------------------
# buildah in a throw-away storage root


class Buildah:
    """`buildah` with a private vfs storage root under `workdir` and chroot isolation."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        # TMPDIR: buildah stages build contexts and layer blobs there; keep them with the storage.
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(workdir / "tmp")}
        self.globals = [
            "buildah", "--root", str(workdir / "storage"), "--runroot", str(workdir / "run"),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def command(self, *args: str) -> list[str]:
        return [*self.globals, *args]

    def run(self, *args: str, timeout: float = 600) -> str:
        """Run a buildah subcommand and return its stdout; its stderr goes into the error."""
        result = subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            detail = result.stderr.strip()[-2000:]
            raise CheckFailed(f"`buildah {' '.join(args[:2])}` exited {result.returncode}: {detail}")
        return result.stdout

    def streamed(self, *args: str, timeout: float) -> None:
        """Run with the output passed through, so a long build shows its progress."""
        try:
            result = subprocess.run(self.command(*args), env=self.env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"`buildah {args[0]}` took longer than {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise CheckFailed(f"`buildah {args[0]}` exited {result.returncode}")

    def image_config(self, image: str) -> dict[str, object]:
        """The image's Docker-format config (Entrypoint, Cmd, User, Env, Healthcheck, ...)."""
        inspected = json.loads(self.run("inspect", "--type", "image", image))
        config = (inspected.get("Docker") or {}).get("config") or {}
        if not config:
            raise CheckFailed(f"{image} has no Docker-format config (build it with --format docker)")
        return dict(config)

    def image_size(self, image: str) -> int:
        """Uncompressed size of the image's layers in bytes, from the storage's own records
        (buildah 1.28 prints sizes only rounded, as "495 MB")."""
        image_id = json.loads(self.run("images", "--json", image))[0]["id"]
        storage = self.workdir / "storage"
        images = json.loads((storage / "vfs-images" / "images.json").read_text())
        layers = json.loads((storage / "vfs-layers" / "layers.json").read_text())
        top = next(entry["layer"] for entry in images if entry["id"].startswith(image_id))  # a short id
        return layer_chain_size(layers, top)

    def remove_everything(self) -> None:
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            with contextlib.suppress(CheckFailed, subprocess.TimeoutExpired, OSError):
                self.run(*args, timeout=300)


def remove_workdir(workdir: Path) -> None:
    """Unmount what is still mounted below `workdir`, then delete it. If a mount will not go away,
    keep the directory: deleting through a bind mount would delete the host's own files."""
    for point in mounts_below(workdir, Path("/proc/self/mountinfo").read_text()):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = mounts_below(workdir, Path("/proc/self/mountinfo").read_text())
    if left:
        log(f"WARNING: {len(left)} mounts remain below {workdir} (first: {left[0]}); not deleting it")
        return
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        log(f"WARNING: could not delete all of {workdir}")


@contextlib.contextmanager
def buildah_workspace(parent: str | None, keep: bool) -> Iterator[Buildah]:
    """A Buildah whose storage lives in a new temporary directory, removed (images and all) at exit."""
    workdir = Path(tempfile.mkdtemp(prefix="effnet-check-image-", dir=parent))
    buildah = Buildah(workdir)
    try:
        yield buildah
    finally:
        if keep:
            log(f"kept the storage in {workdir} (--keep)")
        else:
            buildah.remove_everything()
            remove_workdir(workdir)


# ---------------------------------------------------------------------------------------------------
# The base image: pulled, or a stand-in built from Debian packages


def provide_base_image(buildah: Buildah, name: str, mirror: str) -> str:
    """Make `name` available in the storage; returns how ("pulled" or what the stand-in is)."""
    qualified = qualified_image_name(name)
    try:
        buildah.run("pull", "--quiet", qualified, timeout=900)
        log(f"base image {qualified} pulled")
        return "pulled"
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        reason = str(exc).strip().splitlines()[-1][:300]
        log(f"base image {qualified} cannot be pulled ({reason})")
    suite = debian_suite(name)
    what = f"STAND-IN: Debian {suite} minbase + python3, pip, venv (debootstrap), tagged {qualified}"
    log(f"building a {what}")
    build_standin_base(buildah, qualified, suite, mirror)
    return what


def build_standin_base(buildah: Buildah, tag: str, suite: str, mirror: str) -> None:
    rootfs = buildah.workdir / "standin-rootfs"
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
         suite, str(rootfs), mirror],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise CheckFailed(
            f"debootstrap exited {result.returncode}: {(result.stdout + result.stderr)[-2000:]}"
        )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # as slim images ship: no apt caches
        shutil.rmtree(rootfs / cache)
        (rootfs / cache / "partial").mkdir(parents=True)
    container = buildah.run("from", "scratch").strip()
    mountpoint = buildah.run("mount", container).strip()
    subprocess.run(["cp", "-a", f"{rootfs}/.", mountpoint], check=True)
    buildah.run("umount", container)
    shutil.rmtree(rootfs)
    # The official image has `python` and `pip` on PATH, and its pip installs system-wide; Debian's
    # python3 refuses that (PEP 668), so the stand-in's `python` is a venv first on PATH.
    buildah.run("run", container, "--", "python3", "-m", "venv", STANDIN_VENV)
    path = f"{STANDIN_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    buildah.run(
        "config", "--env", f"PATH={path}", "--env", "LANG=C.UTF-8", "--cmd", "python3",
        "--label", f"{STANDIN_LABEL}=debootstrap {suite} minbase + python3, pip, venv", container,
    )  # fmt: skip
    buildah.run("commit", "--quiet", "--format", "docker", "--rm", container, tag)


# ---------------------------------------------------------------------------------------------------
# The build


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def choose_torch_index(explicit: str | None) -> str:
    if explicit:
        return explicit
    if reachable(f"{PYTORCH_CPU_INDEX}/torch/"):
        return PYTORCH_CPU_INDEX
    log(f"the PyTorch CPU index {PYTORCH_CPU_INDEX} is out of reach: torch comes from {DEFAULT_INDEX}")
    return DEFAULT_INDEX


def find_ca_bundle(environ: dict[str, str]) -> str | None:
    candidates = [environ.get("SSL_CERT_FILE", ""), *CA_BUNDLES]
    return next((path for path in candidates if path and Path(path).is_file()), None)


def ca_volumes(ca_bundle: str | None, workdir: Path) -> list[str]:
    """`--volume` flags for the build: the host's bundle over the image's own (Debian's pip and
    OpenSSL read it), and a pip.conf that points pip's own certifi-based TLS at it as well."""
    if ca_bundle is None:
        return []
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text(f"[global]\ncert = {IMAGE_CA_BUNDLE}\n")
    return [
        "--volume", f"{ca_bundle}:{IMAGE_CA_BUNDLE}:ro",
        "--volume", f"{pip_conf}:/etc/pip.conf:ro",
    ]  # fmt: skip


@dataclass(frozen=True)
class Build:
    tag: str
    torch_index: str
    ca_bundle: str | None
    seconds: float
    image_bytes: int


def build_image(
    buildah: Buildah, tag: str, target: str, variants: str, torch_index: str | None, timeout: float
) -> Build:
    index = choose_torch_index(torch_index)
    ca_bundle = find_ca_bundle(dict(os.environ))
    if ca_bundle:
        log(f"mounting the CA bundle {ca_bundle} read-only into the build")
    started = time.monotonic()
    buildah.streamed(
        "bud", "--format", "docker", "--pull=never", "--network", "host",
        "--file", str(ROOT / "Dockerfile"), "--build-arg", f"FLAVOR={target}",
        "--build-arg", f"VARIANTS={variants}", "--build-arg", f"TORCH_INDEX_URL={index}",
        *ca_volumes(ca_bundle, buildah.workdir), "--tag", tag, str(ROOT),
        timeout=timeout,
    )  # fmt: skip
    seconds = time.monotonic() - started
    size = buildah.image_size(tag)
    log(f"built {tag} in {seconds:.0f} s; image size {human_bytes(size)}")
    return Build(tag=tag, torch_index=index, ca_bundle=ca_bundle, seconds=seconds, image_bytes=size)
