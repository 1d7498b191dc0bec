"""Generate the Python protobuf/gRPC modules from `proto/` into `service/_generated/`.

Generated code is committed, so that a plain `pip install .` (no grpcio-tools) has it, and never
edited by hand: `make proto` rewrites it after a change to proto/, and `python -m service.protogen
--check` (run by the tests) exits non-zero when it differs from what the current .proto files produce.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "service" / "_generated"
PACKAGE = "service._generated"  # the import path of OUT_DIR


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
        for module in out_dir.rglob("*_pb2.py"):
            _use_private_pool(module)
        _rewrite_imports(out_dir)
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/ by service.protogen; do not edit.\n\n'
        'Import as `from service._generated.effnet.v1 import classifier_pb2`."""\n\n'
        "from google.protobuf import descriptor_pool as _descriptor_pool\n\n"
        "# Our descriptors live in this pool, not the process-wide default one: see protogen.py.\n"
        "POOL = _descriptor_pool.DescriptorPool()\n"
    )


def _rewrite_imports(out_dir: Path) -> None:
    """protoc writes imports by proto package (`from effnet.v1 import classifier_pb2`); make them
    absolute inside this package, so that nothing has to be put on sys.path."""
    packages = "|".join(sorted(re.escape(p.name) for p in out_dir.iterdir() if p.is_dir()))
    if not packages:
        return
    pattern = re.compile(rf"^(\s*)from ((?:{packages})(?:\.\w+)*) import (\w+_pb2\b)", re.M)
    for module in [*out_dir.rglob("*.py"), *out_dir.rglob("*.pyi")]:
        text = module.read_text()
        rewritten = pattern.sub(rf"\1from {PACKAGE}.\2 import \3", text)
        if rewritten != text:
            module.write_text(rewritten)


_DEFAULT_POOL = "_descriptor_pool.Default()"
_POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"


def _use_private_pool(module: Path) -> None:
    """Register the module's descriptors in `service._generated.POOL` instead of the default pool.

    The Open Inference Protocol fixes the proto package `inference`, and Triton's own client
    (tritonclient.grpc) registers the same message names in the default pool: both in one process
    (a test, or an application embedding both) would fail with "duplicate symbol". The wire format
    only depends on field numbers and the service path, so a private pool changes nothing for peers.
    """
    text = module.read_text()
    if _DEFAULT_POOL not in text or _POOL_IMPORT not in text:
        raise SystemExit(f"{module}: unexpected protoc output, cannot switch descriptor pool")
    text = text.replace(_POOL_IMPORT, _POOL_IMPORT + f"from {PACKAGE} import POOL as _POOL\n", 1)
    module.write_text(text.replace(_DEFAULT_POOL, "_POOL"))


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
