"""The carried set is complete (bench/gpu/carried.py): what the device run would otherwise find missing
at its first import, found here, offline."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.gpu.carried import IMAGE, RECORDED, ROOT, WHEELS, Pinned, check, read_pins, resolve, roots
from bench.gpu.transfer import CHECK_ONLY


def pins(*lines: str) -> dict[str, Pinned]:
    out = {}
    for line in lines:
        name, _, version = line.partition("==")
        out[name] = Pinned(name, version or None, line)
    return out


def test_every_dependency_resolves_to_a_carried_wheel_or_the_image() -> None:
    result = check()
    assert result.ok, "\n".join(result.problems())
    # What the image is known to lack is carried, and the big ones are among them.
    for name in ("fastapi", "fastapi-offline", "uvicorn", "watchfiles", "websockets", "pydantic",
                 "pydantic-settings", "python-multipart", "grpcio-health-checking", "grpcio-reflection",
                 "onnxruntime-gpu", "nvidia-nvimgcodec-cu13"):  # fmt: skip
        assert name in result.carried, name
    assert "numpy" in result.image and "cupy-cuda13x" in result.image


def test_the_roots_are_the_serving_dependencies_the_gpu_extra_and_the_device_tools() -> None:
    names = {Requirement(str(r)).name: why for r, why in roots()}
    assert names["fastapi-offline"] == "dependencies" and names["onnxruntime-gpu"] == "gpu extra"
    assert "onnxruntime" not in names  # the CPU wheel would overwrite onnxruntime-gpu's package
    assert names["nvidia-nvimgcodec-cu13"] == "gpu extra" and names["cupy-cuda13x"] == "gpu extra"
    assert names["pytest-asyncio"].startswith("device tool")


def test_a_missing_dependency_is_named_with_who_needs_it() -> None:
    graph = {
        ("uvicorn", "0.54.0"): [
            "click>=7.0",
            "watchfiles>=0.20; extra == 'standard'",
            "colorama; sys_platform == 'win32'",
            "tomli; python_version < '3.11'",
        ],  # fmt: skip
        ("fastapi", "0.165.0"): ["starlette>=1.6.0"],
    }
    result = resolve(
        pins("uvicorn==0.54.0", "fastapi==0.165.0"),
        pins("click"),
        [
            (Requirement("uvicorn[standard]==0.54.0"), "dependencies"),
            (Requirement("fastapi==0.165.0"), "dependencies"),
            (Requirement("fastapi-offline==1.7.7"), "dependencies"),
        ],  # fmt: skip
        requires=lambda name, version: graph[(name, version)],
    )
    assert set(result.missing) == {"watchfiles", "starlette", "fastapi-offline"}
    assert result.missing["watchfiles"] == ["uvicorn[standard]"]
    assert "colorama" not in result.missing and "tomli" not in result.missing  # markers for 3.12 linux
    assert not result.ok and any("fastapi-offline" in p for p in result.problems())


def test_versions_are_checked_where_known() -> None:
    requires = {("onnx-helper", "1.0"): ["numpy>=3", "protobuf>=7"]}
    result = resolve(
        pins("onnx-helper==1.0", "protobuf==6.33.6"),
        pins("onnx==1.23.1", "numpy==2.5.2", "pillow"),
        [
            (Requirement("onnx==1.23.2"), "dependencies"),  # our pin, same minor: the image's stands in
            (Requirement("pillow==13.0.0"), "dependencies"),  # version unknown: accepted by name
            (Requirement("onnx-helper==1.0"), "dependencies"),
        ],  # fmt: skip
        requires=lambda name, version: requires.get((name, version), []),
    )
    assert result.substitutions == ["onnx: the image's 1.23.1 for our pin ==1.23.2"]
    assert any(c.startswith("numpy: the image has 2.5.2") for c in result.conflicts)
    assert any(c.startswith("protobuf: wheels.txt has 6.33.6") for c in result.conflicts)
    other_line = resolve(pins(), pins("onnx==1.22.0"), [(Requirement("onnx==1.23.2"), "dependencies")])
    assert other_line.conflicts and not other_line.substitutions


def test_a_carried_line_nothing_needs_is_reported() -> None:
    start = [(Requirement("fastapi"), "dependencies")]
    result = resolve(pins("fastapi==1.0", "leftover==2.0"), pins(), start, requires=lambda name, version: [])
    assert result.unused == ["leftover"] and not result.ok


def test_requirements_of_wheels_not_installed_here_are_recorded() -> None:
    """The resolution runs offline on a machine without the `gpu` extra installed."""
    recorded = json.loads(RECORDED.read_text())
    for pin in read_pins(WHEELS).values():
        try:
            installed = metadata.distribution(pin.name).version == pin.version
        except metadata.PackageNotFoundError:
            installed = False
        assert installed or f"{pin.name}=={pin.version}" in recorded, pin.line


def test_the_image_list_has_what_the_environment_notes_name_and_not_what_it_lacks() -> None:
    image = read_pins(IMAGE)
    for name in ("torch", "torchvision", "onnx", "onnxscript", "cupy-cuda13x", "nvidia-cublas",
                 "nvidia-cudnn-cu13", "nvidia-cuda-runtime", "pillow", "grpcio", "httpx", "uvloop",
                 "prometheus-client", "onnxruntime"):  # fmt: skip
        assert name in image, name
    for name in ("fastapi", "uvicorn", "pydantic", "pydantic-settings", "python-multipart",
                 "grpcio-health-checking", "grpcio-reflection", "onnxruntime-gpu", "fastapi-offline",
                 "watchfiles", "websockets"):  # fmt: skip
        assert name not in image, name
    assert image["onnxruntime"].version == "1.30.0" and image["torch"].version == "2.11.0"


def test_pin_files_refuse_a_name_listed_twice(tmp_path: Path) -> None:
    path = tmp_path / "wheels.txt"
    path.write_text("fastapi==1.0\nFastAPI==1.0  # again\n")
    with pytest.raises(ValueError, match="fastapi listed twice"):
        read_pins(path)


# grpc looks for these at import and goes on without them.
PROBED_BY_GRPC = {"grpcio-tools", "grpcio-health-checking", "grpcio-reflection"}


def test_the_export_needs_only_the_image_and_what_travels_before_the_check() -> None:
    """The export runs in the call before the check: onnxruntime-gpu and nvImageCodec are not there yet."""
    pytest.importorskip("torch", reason="the export's imports need the 'export' extra")
    probe = (
        "import sys, json, importlib.metadata as md; before = set(sys.modules); "
        "import models.export, models.cascade; "
        "tops = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "dists = md.packages_distributions(); "
        "print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {canonicalize_name(d) for d in json.loads(done.stdout.strip().splitlines()[-1])}
    early = set(read_pins(WHEELS)) - set(CHECK_ONLY)
    allowed = set(read_pins(IMAGE)) | early | PROBED_BY_GRPC | {"effnet-serve"}
    assert "pydantic" in imported and "pydantic" in early  # the model spec: why the small wheels go first
    assert imported <= allowed, sorted(imported - allowed)
