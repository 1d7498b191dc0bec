"""Print the serving requirements (pyproject's [project].dependencies) for one image target.

The Docker build runs this so the images install exactly what pyproject.toml pins, in one place.
`--target cpu` is the list as it is (the plain onnxruntime wheel: a smaller image, no CUDA libraries);
`--target gpu` swaps onnxruntime for the `gpu` extra (onnxruntime-gpu, and nvImageCodec, nvJPEG, CuPy:
JPEG decoding on the GPU). The two runtimes own the same package and must never be installed together.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_CPU_RUNTIME = re.compile(r"^onnxruntime(==|\s|$)")
_GPU_RUNTIME = re.compile(r"^onnxruntime-gpu\b")


def serving_requirements(pyproject: Path, target: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    dependencies: list[str] = project["dependencies"]
    if target == "cpu":
        return dependencies
    gpu_extra: list[str] = project.get("optional-dependencies", {}).get("gpu", [])
    if not any(_CPU_RUNTIME.match(dep) for dep in dependencies):
        raise SystemExit("pyproject.toml lists no onnxruntime dependency to swap for onnxruntime-gpu")
    if not any(_GPU_RUNTIME.match(dep) for dep in gpu_extra):
        raise SystemExit("pyproject.toml's gpu extra lists no onnxruntime-gpu")
    return [dep for dep in dependencies if not _CPU_RUNTIME.match(dep)] + gpu_extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", choices=["cpu", "gpu"], required=True)
    default = Path(__file__).resolve().parent.parent / "pyproject.toml"
    parser.add_argument("--pyproject", type=Path, default=default)
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{dep}\n" for dep in serving_requirements(args.pyproject, args.target)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
