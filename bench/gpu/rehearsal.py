"""The device's install, rehearsed here: what would be carried, installed as the device installs it,
into a clean CPython 3.12 that holds only the image's packages, and the server imported there.

The full CPU venv hides a missing wheel (it has everything); this does not. Steps, each recorded in
gpu.json (`rehearsal`):
1. a CPython 3.12 (EFFNET_PYTHON312, `python3.12` on PATH, or pyenv's 3.12), else skipped, saying so;
2. the wheels: the call folders prepare.sh made (joined and verified as on the device), else the
   repacked or downloaded wheels of wheels.txt; none complete: skipped ("run prepare.sh");
3. a venv of that Python with only the image packages the resolution relies on (image-packages.txt's
   versions where known, else this venv's), the heavy ones the server never imports left out (torch,
   CuPy, pytest), from PyPI or pip's cache, built once and reused;
4. the carried wheels with `pip install --no-index --no-deps --target` (as run.sh does there);
5. `import service.__main__` and `python -m service serve --help` there, and where each key module
   came from (onnxruntime must be the carried onnxruntime-gpu, not anything else).
A failure in 3-5 stops the dry run with the reason. `.gpuwheels/rehearsal/ok` marks success: the dry
check then runs in that environment.

    python -m bench.gpu.rehearsal --out DIR
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu import record
from bench.gpu.carried import ROOT, WHEELS, check, read_pins
from bench.gpu.transfer import dist_name, join

WORK = ROOT / ".gpuwheels"
HOME = WORK / "rehearsal"
# Image packages neither the server nor the check imports: left out of the rehearsal's image (size,
# time). CuPy needs a GPU; torch only exports, which the dry run does not.
NOT_IMPORTED = {"torch", "cupy-cuda13x", "pytest", "pytest-timeout"}
IMPORTS = (
    "import service.__main__, service.preprocess.backends, service.runtime.session, json; "
    "import fastapi_offline, onnxruntime, grpc_health, grpc_reflection, uvicorn, watchfiles, websockets; "
    "print(json.dumps({m.__name__: m.__file__ for m in (onnxruntime, fastapi_offline, grpc_health)}))"
)


class Skip(Exception):
    pass


class Failed(Exception):
    pass


def find_python312() -> str | None:
    candidates = [os.environ.get("EFFNET_PYTHON312"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.strip() == "(3, 12)":
            return candidate
    return None


def wheel_source() -> tuple[str, list[Path]]:
    """(what, wheels): the call folders joined as on the device, else repacked, else downloaded."""
    wanted = {(p.name, p.version) for p in read_pins(WHEELS).values()}

    def complete(files: list[Path]) -> bool:
        have = {(dist_name(f), f.name.split("-")[1]) for f in files}
        return wanted <= have

    calls = sorted(WORK.glob("call-*"))
    if calls and all((c / "manifest.json").exists() for c in calls):
        stash = HOME / "stash"
        shutil.rmtree(stash, ignore_errors=True)
        stash.mkdir(parents=True)
        for call in calls:
            for item in call.iterdir():
                target = stash / item.name
                if not target.exists():
                    target.symlink_to(item.resolve())
        try:
            joined = join(stash, HOME / "joined")
        except Exception as exc:
            raise Failed(f"the call folders do not join: {exc}") from exc
        if complete(joined):
            return "call folders (joined and verified)", joined
    for what, folder in (("repacked wheels", WORK / "repacked"), ("downloaded wheels", WORK / "all")):
        files = sorted(folder.glob("*.whl"))
        if files and complete(files):
            return what, files
    raise Skip("no complete set of carried wheels in .gpuwheels/: run bench/gpu/prepare.sh (--download-only)")


def image_requirements() -> list[str]:
    image = read_pins(ROOT / "bench/gpu/image-packages.txt")
    out = []
    for name in sorted(set(check().image) - NOT_IMPORTED):
        version = image[name].version
        if version is None:
            try:
                version = metadata.distribution(name).version
            except metadata.PackageNotFoundError:
                version = None
        out.append(f"{name}=={version}" if version else name)
    return out


def run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def rehearse() -> dict[str, Any]:
    started = time.monotonic()
    info: dict[str, Any] = {}
    python = find_python312()
    if python is None:
        raise Skip("no CPython 3.12 here (EFFNET_PYTHON312, python3.12, pyenv)")
    info["python"] = python
    info["wheels"], wheels = wheel_source()
    venv = HOME / "venv"
    requirements = image_requirements()
    info["image_packages"] = requirements
    stamp = venv / ".image-packages"
    if not stamp.exists() or stamp.read_text() != "\n".join(requirements):
        shutil.rmtree(venv, ignore_errors=True)
        made = run([python, "-m", "venv", str(venv)], 120)
        if made.returncode:
            raise Failed(f"venv: {made.stderr[-500:]}")
        pip = run(
            [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--only-binary=:all:", *requirements],
            600,
        )
        if pip.returncode:
            raise Skip(f"the image's packages could not be installed (offline?): {pip.stderr[-500:]}")
        stamp.write_text("\n".join(requirements))
    site = HOME / "site"
    digest = hashlib.sha256(
        "\n".join(sorted(f"{w.name}:{w.stat().st_size}" for w in wheels)).encode()
    ).hexdigest()
    if not (site / ".installed").exists() or (site / ".installed").read_text() != digest:
        shutil.rmtree(site, ignore_errors=True)
        install = [
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            str(site),
        ]
        pip = run([str(venv / "bin/python"), *install, *map(str, wheels)], 300)
        if pip.returncode:
            raise Failed(f"pip install --target of the carried wheels failed: {pip.stderr[-800:]}")
        (site / ".installed").write_text(digest)
    info["carried_installed"] = len(wheels)
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}", "PYTHONNOUSERSITE": "1"}
    env.pop("LD_LIBRARY_PATH", None)
    imported = run([str(venv / "bin/python"), "-c", IMPORTS], 120, cwd=ROOT, env=env)
    if imported.returncode:
        raise Failed(f"import service.__main__ failed there: {imported.stderr.strip()[-800:]}")
    info["modules"] = json.loads(imported.stdout.strip().splitlines()[-1])
    if not info["modules"]["onnxruntime"].startswith(str(site)):
        raise Failed(f"onnxruntime came from {info['modules']['onnxruntime']}, not the carried wheel")
    helped = run([str(venv / "bin/python"), "-m", "service", "serve", "--help"], 60, cwd=ROOT, env=env)
    if helped.returncode or "--repository" not in helped.stdout:
        raise Failed(f"python -m service serve --help failed there: {helped.stderr[-500:]}")
    info["seconds"] = round(time.monotonic() - started, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    (HOME / "ok").unlink(missing_ok=True)
    HOME.mkdir(parents=True, exist_ok=True)
    try:
        info = rehearse()
    except Skip as exc:
        record.phase(args.out, "rehearsal", f"skipped: {exc}", rehearsal={"skipped": str(exc)})
        print(f"rehearsal skipped: {exc}")
        return 0
    except (Failed, subprocess.TimeoutExpired) as exc:
        record.stop(args.out, "rehearsal", str(exc))
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 1
    record.phase(args.out, "rehearsal", "done", rehearsal=info)
    (HOME / "ok").write_text(json.dumps(info))
    print(
        f"rehearsal: {info['carried_installed']} carried wheels ({info['wheels']}) in a clean "
        f"{info['python']}; service.__main__ imports ({info['seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
