"""Generate the Python protobuf/gRPC modules from `proto/` into `service/_generated/`.

Generated code is a build output (git-ignored) and never edited by hand. `python -m service.protogen
--check` exits non-zero when the generated tree differs from what the current .proto files produce.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "service" / "_generated"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # build-time tool, imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    files = proto_files()
    if files:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *[str(f.relative_to(PROTO_DIR)) for f in files],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    # Generated modules import each other by their proto package path (e.g. `effnet.v1`), so the
    # output root must be importable as a top-level path; service/_generated/__init__.py arranges it.
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/ by service.protogen; do not edit."""\n'
        "import sys as _sys\n"
        "from pathlib import Path as _Path\n\n"
        "_root = str(_Path(__file__).resolve().parent)\n"
        "if _root not in _sys.path:\n"
        "    _sys.path.insert(0, _root)\n"
    )


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if service/_generated is stale")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "_generated"
            generate(fresh)
            if not OUT_DIR.exists() or not _same_tree(fresh, OUT_DIR):
                print("service/_generated is stale: run `make proto`", file=sys.stderr)
                return 1
        return 0
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
