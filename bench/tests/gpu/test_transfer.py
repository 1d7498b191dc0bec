"""Carrying wheels to the device (bench/gpu/transfer.py): repacked wheels still install, calls stay within
what one carries, and a missing or damaged part stops the install with a recorded reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.gpu.transfer import MissingPiece, join, main, plan_calls, repack, write_calls

ROOT = Path(__file__).resolve().parents[3]


def make_wheel(folder: Path, big: int = 300_000) -> Path:
    """A real, installable wheel: a package with a large member and one the device never loads."""
    wheel = folder / "demo_pkg-1.0-py3-none-any.whl"
    members = {
        "demo_pkg/__init__.py": b"VALUE = 42\n",
        "demo_pkg/big.bin": os.urandom(big // 2) + bytes(big // 2),
        "demo_pkg/unused.so": b"\x7fELF" + bytes(1000),
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in members) + "demo_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("demo_pkg-1.0.dist-info/RECORD", record)
    return wheel


def test_a_repacked_wheel_drops_members_compresses_with_lzma_and_installs(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    repacked = repack(wheel, tmp_path / "out", drop=("demo_pkg/unused.so",), lzma_min=100_000)
    with zipfile.ZipFile(repacked) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
        record = archive.read("demo_pkg-1.0.dist-info/RECORD").decode()
    assert "demo_pkg/unused.so" not in methods and "unused.so" not in record
    assert (
        methods["demo_pkg/big.bin"] == zipfile.ZIP_LZMA
        and methods["demo_pkg/__init__.py"] == zipfile.ZIP_DEFLATED
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--target", str(target), str(repacked)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (target / "demo_pkg" / "big.bin").read_bytes() == zipfile.ZipFile(wheel).read("demo_pkg/big.bin")
    assert not (target / "demo_pkg" / "unused.so").exists()


def sized(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def test_calls_are_filled_to_capacity_and_parts_rebuild_each_file(tmp_path: Path) -> None:
    files = [
        sized(tmp_path, "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl", 2500),
        sized(tmp_path, "small-1.0-py3-none-any.whl", 300),
        sized(tmp_path, "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl", 100),
    ]
    pieces = plan_calls(files, capacity=1000)
    per_call: dict[int, int] = {}
    for piece in pieces:
        per_call[piece.call] = per_call.get(piece.call, 0) + piece.size
    assert max(per_call.values()) <= 1000 and len(per_call) == 3  # ceil(2900 / 1000): no call wasted
    # What the export needs travels first, onnxruntime-gpu (the check's alone) last.
    assert [p.source.name.split("-")[0] for p in pieces[:2]] == ["small", "efficientnet_lite_pytorch"]
    assert pieces[0].call == pieces[1].call == 1
    big = [p for p in pieces if p.source.name.startswith("onnxruntime_gpu")]
    assert [p.name.rsplit(".", 1)[1] for p in big] == [f"part{i:02d}" for i in range(len(big))]
    assert b"".join(p.source.read_bytes()[p.offset : p.offset + p.size] for p in big) == files[0].read_bytes()
    with pytest.raises(ValueError):
        plan_calls(files, capacity=0)


@pytest.fixture
def stash(tmp_path: Path) -> tuple[Path, list[Path]]:
    files = [
        sized(tmp_path, "big-1.0-py3-none-any.whl", 2500),
        sized(tmp_path, "small-1.0-py3-none-any.whl", 300),
    ]
    dest = tmp_path / "calls"
    write_calls(plan_calls(files, capacity=1000), dest)
    stash = tmp_path / "stash"
    stash.mkdir()
    for call in sorted(dest.glob("call-*")):
        for item in call.iterdir():
            (stash / item.name).write_bytes(item.read_bytes())
    return stash, files


def test_join_rebuilds_and_verifies_every_wheel(stash: tuple[Path, list[Path]], tmp_path: Path) -> None:
    folder, files = stash
    built = join(folder, tmp_path / "wheels")
    assert sorted(p.read_bytes() for p in built) == sorted(f.read_bytes() for f in files)
    assert join(folder, tmp_path / "wheels") == built  # already there and verified: nothing redone


def test_a_missing_part_stops_the_install_and_says_which(
    stash: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, _ = stash
    (folder / "big-1.0-py3-none-any.whl.part01").unlink()
    with pytest.raises(MissingPiece, match=r"part01 \(call 2 of 3\)"):
        join(folder, tmp_path / "wheels")
    out = tmp_path / "out"
    assert main(["join", "--stash", str(folder), "--into", str(tmp_path / "w2"), "--out", str(out)]) == 3
    report = json.loads((out / "gpu.json").read_text())
    assert report["stopped"]["phase"] == "install" and "part01" in report["stopped"]["reason"]


def test_a_damaged_part_is_caught_by_the_digest(stash: tuple[Path, list[Path]], tmp_path: Path) -> None:
    folder, _ = stash
    part = folder / "big-1.0-py3-none-any.whl.part00"
    part.write_bytes(bytes(len(part.read_bytes())))
    with pytest.raises(MissingPiece, match="sha256"):
        join(folder, tmp_path / "wheels")
