"""Getting the carried wheels onto the GPU machine: repack, split into device calls, join and verify.

Standard library only: `join` runs on the device machine with whatever Python it has.

One device call carries at most 64 MiB, the working tree included, and the machine goes back 30 s after
a call, so the wheels travel in as few calls as their bytes allow, made back to back:
- `repack`: a published wheel rewritten with what the device never loads left out (TRIMS: the
  TensorRT provider, the C-API copy of ONNX Runtime, nvImageCodec's modules for other Pythons and codecs
  we do not decode on the GPU) and large members compressed with LZMA, which pip installs like any
  wheel (zipfile reads it). onnxruntime-gpu goes from 244 to about 190 MiB this way.
- `plan_calls`: every file into consecutive calls, each filled to its capacity, a file larger than
  what is left of a call split into parts (`NAME.partNN`); what only the check needs (onnxruntime-gpu,
  nvImageCodec) goes last, so the export, which needs the rest (the service's model spec imports
  pydantic; lite0's weights), runs in the call before the check. A `manifest.json` (sizes and sha256 of
  every wheel and part) rides in every call.
- `join`: on the device, from the stash folder the calls filled: every part present with its size,
  every joined wheel with its sha256, else a recorded failure naming what is missing (gpu.json) and
  exit status 3.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20
CALL_LIMIT = 64 * MIB  # what one device call carries, the working tree included
LZMA_MIN_BYTES = 1 * MIB  # members at least this large are stored with LZMA when repacked

# Members the device never loads, per distribution (fnmatch patterns on the member path).
TRIMS: dict[str, tuple[str, ...]] = {
    "onnxruntime-gpu": (
        "onnxruntime/capi/libonnxruntime.so*",  # the C API library: the Python module has its own core
        "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",  # no TensorRT in the image
    ),
    "nvidia-nvimgcodec-cu13": (
        "nvidia/nvimgcodec/nvimgcodec_impl.cpython-3[!1]*",  # modules for other Pythons than 3.12...
        "nvidia/nvimgcodec/nvimgcodec_impl.cpython-31[!2]*",
        "nvidia/nvimgcodec/nvimgcodec_impl.cpython-312t*",
        "nvidia/nvimgcodec/extensions/libopencv_ext.so*",  # ...and codecs we never decode on the GPU
        "nvidia/nvimgcodec/extensions/libtiff_ext.so*",
        "nvidia/nvimgcodec/extensions/libnvtiff_ext.so*",
        "nvidia/nvimgcodec/extensions/libnvjpeg2k_ext.so*",
    ),
}
# Carried wheels only the check call needs: they travel last. Everything else goes first, because the
# export (before the check call) imports the service's model spec (pydantic, ...) and lite0's weights.
CHECK_ONLY = ("onnxruntime-gpu", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg")


def dist_name(wheel: Path | str) -> str:
    """Canonical distribution name from a wheel's file name (PEP 503 normalisation)."""
    raw = Path(wheel).name.split("-")[0]
    return "-".join(part for part in raw.replace("_", "-").replace(".", "-").lower().split("-") if part)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def repack(wheel: Path, out_dir: Path, drop: tuple[str, ...] = (), lzma_min: int = LZMA_MIN_BYTES) -> Path:
    """`wheel` rewritten into `out_dir` (same file name) without the members matching `drop` (and their
    RECORD lines), members of at least `lzma_min` bytes stored with LZMA, the rest deflated."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    dropped: set[str] = set()
    with zipfile.ZipFile(wheel) as source:
        names = source.namelist()
        dropped = {n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in drop)}
        record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w") as out:
            for info in source.infolist():
                if info.filename in dropped:
                    continue
                data = source.read(info)
                if info.filename == record:
                    lines = data.decode().splitlines()
                    data = (
                        "\n".join(li for li in lines if li.split(",", 1)[0] not in dropped) + "\n"
                    ).encode()
                method = zipfile.ZIP_LZMA if info.file_size >= lzma_min else zipfile.ZIP_DEFLATED
                member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                member.external_attr = info.external_attr
                member.compress_type = method
                out.writestr(member, data)
    partial.replace(target)
    return target


@dataclass(frozen=True)
class Piece:
    """A file, or a byte range of one, travelling in one call."""

    source: Path
    name: str  # file name in the call folder (NAME or NAME.partNN)
    offset: int
    size: int
    call: int  # 1-based


def plan_calls(files: list[Path], capacity: int, last: tuple[str, ...] = CHECK_ONLY) -> list[Piece]:
    """Every file into consecutive calls of `capacity` bytes each (the last one partly filled), split
    where a call is full. Files of the distributions in `last` go last; within each group, the largest
    first."""
    if capacity <= 0:
        raise ValueError(f"no room in a call: capacity {capacity} bytes")
    ordered = sorted(files, key=lambda f: (dist_name(f) in last, -f.stat().st_size, f.name))
    pieces: list[Piece] = []
    call, room = 1, capacity
    for path in ordered:
        size, offset, index = path.stat().st_size, 0, 0
        if room == 0:
            call, room = call + 1, capacity
        split = size > room  # starts in this call, ends in a later one: it travels as parts
        while offset < size:
            if room == 0:
                call, room = call + 1, capacity
            take = min(room, size - offset)
            name = f"{path.name}.part{index:02d}" if split else path.name
            pieces.append(Piece(path, name, offset, take, call))
            offset, room, index = offset + take, room - take, index + 1
    return pieces


def write_calls(pieces: list[Piece], dest: Path) -> dict[str, object]:
    """The call folders dest/call-N with their pieces, and the manifest (also returned)."""
    for old in dest.glob("call-*"):
        shutil.rmtree(old)
    wheels: dict[str, dict[str, object]] = {}
    for piece in pieces:
        folder = dest / f"call-{piece.call}"
        folder.mkdir(parents=True, exist_ok=True)
        with piece.source.open("rb") as src, (folder / piece.name).open("wb") as out:
            src.seek(piece.offset)
            out.write(src.read(piece.size))
        entry = wheels.setdefault(
            piece.source.name,
            {"bytes": piece.source.stat().st_size, "sha256": sha256(piece.source), "parts": []},
        )
        parts = entry["parts"]
        assert isinstance(parts, list)
        parts.append({"name": piece.name, "bytes": piece.size, "call": piece.call})
    manifest: dict[str, object] = {"calls": max((p.call for p in pieces), default=0), "wheels": wheels}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    for folder in dest.glob("call-*"):
        (folder / "manifest.json").write_text(text)
    return manifest


class MissingPiece(RuntimeError):
    pass


def join(stash: Path, into: Path, manifest: dict[str, object] | None = None) -> list[Path]:
    """Rebuild every wheel of the manifest from `stash` into `into`, verified; MissingPiece names the
    first wheel that cannot be (a part absent or short, a digest that differs)."""
    manifest = manifest or json.loads((stash / "manifest.json").read_text())
    wheels = manifest["wheels"]
    assert isinstance(wheels, dict)
    into.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    for name, entry in sorted(wheels.items()):
        target = into / name
        if target.exists() and target.stat().st_size == entry["bytes"] and sha256(target) == entry["sha256"]:
            built.append(target)
            continue
        for part in entry["parts"]:
            path = stash / part["name"]
            if not path.exists():
                raise MissingPiece(
                    f"{part['name']} (call {part['call']} of {manifest['calls']}) is not in {stash}"
                )
            if path.stat().st_size != part["bytes"]:
                raise MissingPiece(f"{part['name']} has {path.stat().st_size} bytes, not {part['bytes']}")
        partial = target.with_name(target.name + ".joining")
        with partial.open("wb") as out:
            for part in entry["parts"]:
                with (stash / part["name"]).open("rb") as src:
                    shutil.copyfileobj(src, out, 16 * MIB)
        if sha256(partial) != entry["sha256"]:
            partial.unlink()
            raise MissingPiece(f"{name}: joined parts do not match its sha256")
        partial.replace(target)
        built.append(target)
    return built


def _record_stop(out: Path | None, phase: str, reason: str) -> None:
    if out is None:
        return
    from bench.gpu.record import stop

    stop(out, phase, reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("repack", help="trim and recompress the downloaded wheels (TRIMS)")
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--dest", type=Path, required=True)
    p = sub.add_parser("plan", help="split the repacked wheels into call folders with a manifest")
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--capacity-mib", type=float, required=True)
    p = sub.add_parser("join", help="on the device: rebuild and verify the wheels from the stash")
    p.add_argument("--stash", type=Path, required=True)
    p.add_argument("--into", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="record a failure in OUT/gpu.json")
    args = parser.parse_args(argv)
    if args.command == "repack":
        for wheel in sorted(args.source.glob("*.whl")):
            done = args.dest / wheel.name
            if done.exists() and done.stat().st_mtime >= wheel.stat().st_mtime:
                continue  # repacked already (LZMA on 280 MB takes minutes)
            target = repack(wheel, args.dest, TRIMS.get(dist_name(wheel), ()))
            before, after = wheel.stat().st_size / MIB, target.stat().st_size / MIB
            print(f"{wheel.name}: {before:.1f} -> {after:.1f} MiB")
        return 0
    if args.command == "plan":
        pieces = plan_calls(sorted(args.source.glob("*.whl")), int(args.capacity_mib * MIB))
        manifest = write_calls(pieces, args.dest)
        print(json.dumps({"calls": manifest["calls"]}))
        return 0
    try:
        built = join(args.stash, args.into)
    except (MissingPiece, OSError, KeyError, ValueError) as exc:
        reason = f"wheels: {exc}"
        print(reason, file=sys.stderr)
        _record_stop(args.out, "install", reason)
        return 3
    print(f"joined and verified {len(built)} wheels in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
