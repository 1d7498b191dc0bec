"""Print the serving requirements (pyproject's [project].dependencies) for one image target.

The Docker build runs this so the images install exactly what pyproject.toml pins, in one place.
`--target cpu` swaps onnxruntime-gpu for the plain CPU wheel (smaller image, no CUDA libraries);
`--target gpu` keeps the list and adds the `gpu` extra (nvImageCodec, nvJPEG, CuPy: JPEG decoding on
the GPU).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

CPU_ONNXRUNTIME = "onnxruntime==1.32.0"
_GPU_RUNTIME = re.compile(r"^onnxruntime-gpu\b")


def serving_requirements(pyproject: Path, target: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    dependencies: list[str] = project["dependencies"]
    if target == "gpu":
        return [*dependencies, *project.get("optional-dependencies", {}).get("gpu", [])]
    swapped = [CPU_ONNXRUNTIME if _GPU_RUNTIME.match(dep) else dep for dep in dependencies]
    if CPU_ONNXRUNTIME not in swapped:
        raise SystemExit("pyproject.toml lists no onnxruntime-gpu dependency to swap for the CPU wheel")
    return swapped


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
