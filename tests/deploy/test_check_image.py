"""The pieces of `make check-image` (docker/check_image.py, docker/image_build.py) that run without
buildah. The whole check, which builds and runs the image, is `make check-image` itself."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .tooling import ROOT

# docker/ is no package; the check script imports image_build from beside itself, so import both as the
# script sees them (one module each, registered in sys.modules, which dataclasses need).
sys.path.insert(0, str(ROOT / "docker"))
check_image = importlib.import_module("check_image")
image_build = importlib.import_module("image_build")
CheckFailed = image_build.CheckFailed


def test_base_image_name_comes_from_the_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert image_build.dockerfile_arg_default(text, "PYTHON_IMAGE") == "python:3.11.14-slim-bookworm"
    assert image_build.dockerfile_arg_default(text, "TORCH_INDEX_URL") == image_build.PYTORCH_CPU_INDEX
    with pytest.raises(CheckFailed, match="NOPE"):
        image_build.dockerfile_arg_default(text, "NOPE")


@pytest.mark.parametrize(
    ("name", "qualified"),
    [
        ("python:3.11.14-slim-bookworm", "docker.io/library/python:3.11.14-slim-bookworm"),
        (
            "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
            "docker.io/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
        ),
        ("quay.io/org/img:1", "quay.io/org/img:1"),
        ("localhost:5000/img:1", "localhost:5000/img:1"),
        ("localhost/img:1", "localhost/img:1"),
    ],
)
def test_qualified_image_name(name: str, qualified: str) -> None:
    assert image_build.qualified_image_name(name) == qualified


def test_debian_suite_follows_the_tag() -> None:
    assert image_build.debian_suite("python:3.11.14-slim-bookworm") == "bookworm"
    assert image_build.debian_suite("python:3.12-slim-trixie") == "trixie"
    assert image_build.debian_suite("python:3.11-slim") == "bookworm"


def test_mounts_below_finds_nested_mounts_deepest_first() -> None:
    mountinfo = "\n".join(
        [
            "22 1 0:21 / /tmp rw - tmpfs tmpfs rw",
            "30 22 0:30 / /tmp/work/storage rw - xfs /dev/x rw",
            "31 30 0:31 / /tmp/work/storage/vfs/dir/etc/ssl/certs/ca.crt ro - xfs /dev/x rw",
            "32 22 0:32 / /tmp/work\\040two rw - xfs /dev/x rw",
            "33 22 0:33 / /tmp/workshop rw - xfs /dev/x rw",
        ]
    )
    found = image_build.mounts_below(Path("/tmp/work"), mountinfo)
    assert found == ["/tmp/work/storage/vfs/dir/etc/ssl/certs/ca.crt", "/tmp/work/storage"]
    assert image_build.mounts_below(Path("/tmp/work two"), mountinfo) == ["/tmp/work two"]


def test_remove_workdir_deletes_an_unmounted_tree(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "storage" / "vfs").mkdir(parents=True)
    (work / "storage" / "vfs" / "layer").write_text("x")
    image_build.remove_workdir(work)
    assert not work.exists()


def test_layer_chain_size_follows_parents_only() -> None:
    layers = [
        {"id": "base", "diff-size": 100},
        {"id": "mid", "parent": "base", "diff-size": 20},
        {"id": "top", "parent": "mid", "diff-size": 3},
        {"id": "other", "parent": "base", "diff-size": 5000},
    ]
    assert image_build.layer_chain_size(layers, "top") == 123
    assert image_build.layer_chain_size(layers, "base") == 100


def test_human_bytes() -> None:
    assert image_build.human_bytes(999) == "999 B"
    assert image_build.human_bytes(412_345_678) == "412.3 MB"
    assert image_build.human_bytes(5_600_000_000) == "5.60 GB"


def test_ca_volumes_mount_the_bundle_and_point_pip_at_it(tmp_path: Path) -> None:
    assert image_build.ca_volumes(None, tmp_path) == []
    flags = image_build.ca_volumes("/etc/host-bundle.pem", tmp_path)
    assert flags[:2] == ["--volume", "/etc/host-bundle.pem:/etc/ssl/certs/ca-certificates.crt:ro"]
    assert flags[2:] == ["--volume", f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro"]
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in (tmp_path / "pip.conf").read_text()


def test_find_ca_bundle_prefers_ssl_cert_file(tmp_path: Path) -> None:
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert image_build.find_ca_bundle({"SSL_CERT_FILE": str(bundle)}) == str(bundle)
    fallback = image_build.find_ca_bundle({"SSL_CERT_FILE": str(tmp_path / "missing.pem")})
    assert fallback is None or fallback in image_build.CA_BUNDLES


def test_an_explicit_torch_index_is_used_as_given() -> None:
    assert image_build.choose_torch_index("https://mirror.example/simple") == "https://mirror.example/simple"


DOCKER_CONFIG = {
    "User": "10001:10001",
    "Env": ["PATH=/usr/bin", "EFFNET_REPOSITORY=/models", "EFFNET_DEVICE=cpu"],
    "Entrypoint": ["python", "-m", "service"],
    "Cmd": ["serve"],
    "Healthcheck": {
        "Test": ["CMD", "python", "/usr/local/lib/effnet/healthcheck.py"],
        "Interval": 10_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 120_000_000_000,
        "Retries": 3,
    },
}


def test_parse_healthcheck_reads_the_docker_config() -> None:
    health = check_image.parse_healthcheck(DOCKER_CONFIG)
    assert health.command == ["python", "/usr/local/lib/effnet/healthcheck.py"]
    assert (health.start_period_s, health.timeout_s) == (120.0, 5.0)
    shell = check_image.parse_healthcheck({"Healthcheck": {"Test": ["CMD-SHELL", "curl -f localhost"]}})
    assert shell.command == ["/bin/sh", "-c", "curl -f localhost"]


@pytest.mark.parametrize("config", [{}, {"Healthcheck": {"Test": ["NONE"]}}, {"Healthcheck": {"Test": []}}])
def test_parse_healthcheck_refuses_an_image_without_one(config: dict[str, object]) -> None:
    with pytest.raises(CheckFailed):
        check_image.parse_healthcheck(config)


def test_image_command_and_env() -> None:
    assert check_image.image_command(DOCKER_CONFIG) == ["python", "-m", "service", "serve"]
    assert check_image.image_command({"Cmd": ["serve"]}) == ["serve"]
    with pytest.raises(CheckFailed):
        check_image.image_command({})
    assert check_image.image_env(DOCKER_CONFIG, "EFFNET_REPOSITORY", "/x") == "/models"
    assert check_image.image_env(DOCKER_CONFIG, "EFFNET_NOPE", "/x") == "/x"


def test_the_dockerfile_healthcheck_reaches_the_check() -> None:
    """The check reads the HEALTHCHECK's start period from the image; it must be what the Dockerfile says."""
    text = (ROOT / "Dockerfile").read_text()
    assert "--start-period=120s" in text, "update DOCKER_CONFIG above when the start period changes"


@pytest.mark.parametrize(
    ("ids", "cat"), [([282, 281, 285], True), ([285], True), ([280, 281], False), ([], False)]
)
def test_top1_is_cat(ids: list[int], cat: bool) -> None:
    assert check_image.top1_is_cat(ids) is cat


def test_runs_command_matches_the_server_not_buildahs_helper() -> None:
    argv = ["python", "-m", "service", "serve"]
    assert check_image.runs_command(["/opt/venv/bin/python", "-m", "service", "serve"], argv)
    assert check_image.runs_command(argv, argv)
    assert not check_image.runs_command(
        ["buildah-chroot-exec", "/opt/venv/bin/python", "-m", "service", "serve"], argv
    )
    assert not check_image.runs_command(["python", "-m", "service", "classify"], argv)
    assert not check_image.runs_command([], [])


def test_process_uids_and_the_non_root_rule() -> None:
    status = "Name:\tpython\nUid:\t10001\t10001\t10001\t10001\nGid:\t10001\t10001\t10001\t10001\n"
    uids = check_image.process_uids(status)
    assert uids == (10001, 10001, 10001, 10001)
    check_image.check_uids(uids, "10001:10001")
    with pytest.raises(CheckFailed, match="root"):
        check_image.check_uids((10001, 0, 10001, 10001), "10001:10001")
    with pytest.raises(CheckFailed, match="USER"):
        check_image.check_uids((1000,) * 4, "10001:10001")
    with pytest.raises(CheckFailed):
        check_image.process_uids("Name:\tpython\n")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_descendants_finds_grandchildren() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        # A child forked by sh shows sh's command line until it has exec'd sleep: wait for both.
        def sleeping(pids: list[int]) -> bool:
            return len(pids) == 2 and all(_cmdline(pid).startswith(b"sleep") for pid in pids)

        deadline = time.monotonic() + 10
        while not sleeping(found := check_image.descendants(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 2
        assert sleeping(found)
        assert parent.pid not in found
    finally:
        for pid in check_image.descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def _probe(directory: Path, as_uid: int | None) -> dict[str, object]:
    def drop() -> None:
        if as_uid is not None:
            os.setgid(as_uid)
            os.setuid(as_uid)

    # The system's Python: the venv's may sit where the other user cannot reach (the probe is stdlib only).
    result = subprocess.run(
        ["/usr/bin/python3", "-c", check_image.MODELS_READ_ONLY_PROBE, str(directory)],
        capture_output=True, text=True, timeout=30, check=False, preexec_fn=drop,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="the probe runs as another user (needs root) with the system's Python",
)
def test_read_only_probe_tells_writable_from_read_only() -> None:
    # Not pytest's tmp_path: its parent is private to root, and the probe runs as nobody.
    with tempfile.TemporaryDirectory(prefix="effnet-probe-") as top:
        models = Path(top) / "models"
        (models / "lite0" / "1").mkdir(parents=True)
        (models / "lite0" / "1" / "model.onnx").write_bytes(b"onnx")
        (models / "lite0" / "labels.txt").write_text("tabby\n")
        for path in [Path(top), *Path(top).rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        as_nobody = _probe(models, as_uid=65534)
        assert as_nobody == {"uid": 65534, "writable": [], "files": 2}
        as_root = _probe(models, as_uid=None)
        assert as_root["uid"] == 0 and len(as_root["writable"]) == 5  # type: ignore[arg-type]


def test_summary_names_every_number() -> None:
    report = check_image.Report(
        base_image="python:3.11.14-slim-bookworm", base_source="pulled", torch_index="https://pypi.org/simple",
        target="cpu", variants="lite0", build_seconds=131.0, image_bytes=456_000_000,
        start_to_ready_seconds=4.2,
    )  # fmt: skip
    text = check_image.summary(report, 300.0)
    for expected in ("131 s", "456.0 MB", "4.2 s", "gpu target", "pulled", "300 s"):
        assert expected in text
