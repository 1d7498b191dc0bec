"""Write a cascade into the model repository: `python -m models.cascade --help`.

    python -m models.cascade --repository models/repository --name cascade-lite \
        --stage lite0-int8:0.45 --stage lite2

Or let your own labelled photos choose the exit confidence (models/tune.py):

    python -m models.cascade --repository models/repository --name cascade-mine \
        --stage lite0-int8 --stage lite2 --tune photos/ --max-drop 0.5

picks the cheapest exit confidence whose top-1 on the photos stays within 0.5 percentage points of the
last stage's, writes it into `cascade.json` and the whole curve beside it (`cascade-tuning.json`).

`--fp32-where-int8-is-slow` (what `make models` passes) makes a stage `X-int8` into `X` where this CPU
runs int8 without ONNX Runtime's fused kernels (x86 without VNNI, service/runtime/int8_kernels.py):
there int8 costs more than fp32, and the cascade's first stage would cost what its last one saves.

A cascade is a folder holding `cascade.json` (service.lifecycle.configs.CascadeSpec): its stages
run in order and an image leaves at the first stage whose top probability reaches that stage's exit
confidence. The file is validated here as the server will validate it, and written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.errors import ExportError
from service.lifecycle.configs import CASCADE_FILE, CascadeSpec
from service.model_spec import MODEL_NAME_PATTERN
from service.runtime.int8_kernels import fused_int8_exact

INT8_SUFFIX = "-int8"


def fp32_where_int8_is_slow(
    repository: Path, stages: list[dict[str, object]], int8_fused: bool
) -> tuple[list[dict[str, object]], list[str]]:
    """`stages` with each `X-int8` model made `X` (where the repository has X) unless int8 runs fused
    here; and a line for each stage replaced."""
    if int8_fused:
        return stages, []
    chosen: list[dict[str, object]] = []
    replaced: list[str] = []
    for stage in stages:
        model = str(stage["model"])
        fp32 = model.removesuffix(INT8_SUFFIX)
        if model.endswith(INT8_SUFFIX) and (repository / fp32).is_dir():
            stage = {**stage, "model": fp32}
            replaced.append(f"{fp32} in place of {model}")
        chosen.append(stage)
    return chosen, replaced


def parse_stage(text: str) -> dict[str, object]:
    model, _, threshold = text.partition(":")
    stage: dict[str, object] = {"model": model}
    if threshold:
        stage["exit_confidence"] = float(threshold)
    return stage


TUNING_FILE = "cascade-tuning.json"


def _write_atomic(folder: Path, name: str, text: str) -> Path:
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".cascade-")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, folder / name)
    return folder / name


def write_cascade(repository: Path, name: str, spec: CascadeSpec) -> Path:
    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(f"cascade name {name!r} must match {MODEL_NAME_PATTERN.pattern}")
    missing = [s.model for s in spec.stages if not (repository / s.model).is_dir()]
    if missing:
        raise ValueError(f"stages not in {repository}: {', '.join(missing)} (export them first)")
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    return _write_atomic(folder, CASCADE_FILE, spec.model_dump_json(indent=2, exclude_none=True) + "\n")


def tune_cascade(
    repository: Path, name: str, stages: list[str], source: Path, max_drop: float, description: str | None
) -> tuple[Path, dict[str, Any]]:
    """Choose the exit confidence on `source` (models.tune), write cascade.json with it and the curve
    beside it. Writes nothing when no threshold keeps top-1 within `max_drop`."""
    from models.tune import tune

    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(f"cascade name {name!r} must match {MODEL_NAME_PATTERN.pattern}")
    curve = tune(repository, stages, source, max_drop)
    chosen = curve["chosen"]
    if chosen is None:
        raise ValueError(
            f"no exit confidence keeps top-1 within {max_drop} points of {stages[-1]} "
            f"({curve['last_stage_top1']:.2f}%) on {curve['images']} photos: serve {stages[-1]} alone"
        )
    spec = CascadeSpec.model_validate(
        {
            "stages": [{"model": m, "exit_confidence": chosen["threshold"]} for m in stages[:-1]]
            + [{"model": stages[-1]}],
            "description": description
            or f"exit confidence tuned on {curve['images']} labelled photos (max drop {max_drop} points)",
        }
    )
    path = write_cascade(repository, name, spec)
    _write_atomic(path.parent, TUNING_FILE, json.dumps(curve, indent=2) + "\n")
    return path, curve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cascade", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the cascade's model name, e.g. cascade-lite")
    parser.add_argument(
        "--stage", action="append", required=True, metavar="MODEL[:EXIT_CONFIDENCE]",
        help="in order; every stage but the last needs an exit confidence in (0, 1] (with --tune: none)",
    )  # fmt: skip
    parser.add_argument("--description", default=None)
    parser.add_argument(
        "--tune", type=Path, metavar="DIR|CSV",
        help="choose the exit confidence on these labelled photos (class folders or a CSV of file,label)",
    )  # fmt: skip
    parser.add_argument(
        "--max-drop", type=float, default=0.5,
        help="--tune: top-1 may fall this many percentage points below the last stage's (default 0.5)",
    )  # fmt: skip
    parser.add_argument(
        "--fp32-where-int8-is-slow", action="store_true",
        help="a stage X-int8 becomes X where this CPU runs int8 without fused kernels (no VNNI), slower "
        "than fp32",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        stages = [parse_stage(s) for s in args.stage]
        description = args.description
        if args.fp32_where_int8_is_slow:
            stages, replaced = fp32_where_int8_is_slow(args.repository, stages, fused_int8_exact())
            if replaced:
                why = "this CPU runs int8 without fused kernels (no VNNI), slower than fp32"
                description = description or f"{', '.join(replaced)}: {why}"
                print(f"{args.name}: {description}")
        if args.tune is not None:
            path, curve = tune_cascade(
                args.repository,
                args.name,
                [str(stage["model"]) for stage in stages],
                args.tune,
                args.max_drop,
                description,
            )
            chosen = curve["chosen"]
            print(
                f"{args.name}: exit confidence {chosen['threshold']:.2f}: top-1 {chosen['top1']:.2f}% "
                f"(last stage alone {curve['last_stage_top1']:.2f}%), {chosen['ms_per_image']:.2f} ms and "
                f"{chosen['gmacs_per_image']:.3f} GMACs per image, "
                f"{1 - chosen['reached'][-1]:.0%} answered before the last stage, on {curve['images']} "
                f"photos -> {path} (curve: {path.parent / TUNING_FILE})"
            )
            return 0
        spec = CascadeSpec.model_validate({"stages": stages, "description": description})
        path = write_cascade(args.repository, args.name, spec)
    except (ValidationError, ValueError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {' -> '.join(s.model for s in spec.stages)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
