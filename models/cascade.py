"""Write a cascade into the model repository: `python -m models.cascade --help`.

    python -m models.cascade --repository models/repository --name cascade-lite \
        --stage lite0-int8:0.45 --stage lite2

A cascade is a folder holding `cascade.json` (service.lifecycle.configs.CascadeSpec): its stages
run in order and an image leaves at the first stage whose top probability reaches that stage's exit
confidence. The file is validated here as the server will validate it, and written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from service.lifecycle.configs import CASCADE_FILE, CascadeSpec
from service.model_spec import MODEL_NAME_PATTERN


def parse_stage(text: str) -> dict[str, object]:
    model, _, threshold = text.partition(":")
    stage: dict[str, object] = {"model": model}
    if threshold:
        stage["exit_confidence"] = float(threshold)
    return stage


def write_cascade(repository: Path, name: str, spec: CascadeSpec) -> Path:
    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(f"cascade name {name!r} must match {MODEL_NAME_PATTERN.pattern}")
    missing = [s.model for s in spec.stages if not (repository / s.model).is_dir()]
    if missing:
        raise ValueError(f"stages not in {repository}: {', '.join(missing)} (export them first)")
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".cascade-")
    with os.fdopen(handle, "w") as file:
        file.write(spec.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, folder / CASCADE_FILE)
    return folder / CASCADE_FILE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cascade", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the cascade's model name, e.g. cascade-lite")
    parser.add_argument(
        "--stage", action="append", required=True, metavar="MODEL[:EXIT_CONFIDENCE]",
        help="in order; every stage but the last needs an exit confidence in (0, 1]",
    )  # fmt: skip
    parser.add_argument("--description", default=None)
    args = parser.parse_args(argv)
    try:
        spec = CascadeSpec.model_validate(
            {"stages": [parse_stage(s) for s in args.stage], "description": args.description}
        )
        path = write_cascade(args.repository, args.name, spec)
    except (ValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {' -> '.join(s.model for s in spec.stages)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
