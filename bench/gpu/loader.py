"""The CUDA 13 and cuDNN library folders of this Python's pip wheels, for LD_LIBRARY_PATH.

Standard library only. onnxruntime-gpu 1.31 needs libcublasLt.so.13, libcublas.so.13, libcurand.so.10,
libcudart.so.13 and cuDNN 9 on the loader path; in the device image they are pip wheels of the image's
own Python (nvidia/cu13/lib, nvidia/cudnn/lib under its site-packages), not beside the carried
onnxruntime, so `onnxruntime.preload_dlls()` does not find them. The loader reads LD_LIBRARY_PATH when a
process starts: run.sh exports what this prints before it starts any measuring Python.

    python3 -m bench.gpu.loader       # prints dir:dir:... (sys.path order), nothing when none is found
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

LIBRARY_FOLDERS = ("nvidia/cu13/lib", "nvidia/cudnn/lib")
# What the CUDA provider of onnxruntime-gpu 1.31 loads (NEEDED, then dlopen for cuDNN).
REQUIRED = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudnn.so.9")


def library_dirs(paths: Iterable[str] | None = None) -> list[str]:
    """Every existing nvidia/cu13/lib and nvidia/cudnn/lib under the entries of `paths` (sys.path)."""
    found: list[str] = []
    for entry in sys.path if paths is None else paths:
        for folder in LIBRARY_FOLDERS:
            candidate = Path(entry or ".") / folder
            if candidate.is_dir() and str(candidate.resolve()) not in found:
                found.append(str(candidate.resolve()))
    return found


def locate(libraries: Iterable[str] = REQUIRED, dirs: Iterable[str] = ()) -> dict[str, str | None]:
    """Where each library lies among `dirs`, or None."""
    folders = [Path(d) for d in dirs]
    return {lib: next((str(f / lib) for f in folders if (f / lib).exists()), None) for lib in libraries}


def main() -> int:
    print(":".join(library_dirs()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
