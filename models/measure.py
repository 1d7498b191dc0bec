"""Measure repository models on your own labelled photos and record it in their `model.json`:

    python -m models.measure photos/ --repository models/repository --model my-b3 --dataset shop-photos

photos/ is a folder of class folders or a CSV of file,label (as `python -m service eval` reads it).
Each model runs in ONNX Runtime on the photos preprocessed from its own `model.json`, as the server
would; its top-1/top-5 go into `model.json` as `measured` (dataset name, image count, top-1, top-5),
beside the published `accuracy`, which stays. `auto` prefers measured figures when every model it may
choose was measured on the same set. The file is replaced atomically; a serving server picks the
change up on its next load (or poll).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from models.errors import ExportError
from models.labelled import (
    RepositoryModel,
    find_model,
    pixels,
    probabilities,
    read_labelled,
    targets,
    top_k_accuracy,
)
from service.model_spec import SPEC_FILE, MeasuredAccuracy
from service.preprocess.images import PreprocessSpec

HOW = "models.measure: ONNX Runtime CPU, each photo preprocessed by service.preprocess.images from model.json"


def measure(model: RepositoryModel, source: Path, dataset: str) -> MeasuredAccuracy:
    samples = read_labelled(source)
    truth = targets(samples, model.labels)
    probs = probabilities(model, pixels(samples, PreprocessSpec.from_model_spec(model.spec)), threads=2)
    return MeasuredAccuracy(
        dataset=dataset,
        images=len(samples),
        top1=round(top_k_accuracy(probs, truth, 1), 2),
        top5=round(top_k_accuracy(probs, truth, 5), 2),
        measured_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        how=HOW,
    )


def record(model: RepositoryModel, measured: MeasuredAccuracy) -> Path:
    """Write `measured` into the model's model.json, atomically."""
    path = model.folder / SPEC_FILE
    handle, temporary = tempfile.mkstemp(dir=model.folder, prefix=".model-")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(model.spec.with_measured(measured).to_json())
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.measure", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, metavar="DIR|CSV", help="a folder of class folders, or a CSV")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="repeat for several")
    parser.add_argument("--version", type=int, default=None, help="default: the newest")
    parser.add_argument(
        "--dataset", required=True, help="a name for this photo set, recorded with the figures"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the figures, change no model.json")
    args = parser.parse_args(argv)
    try:
        models = [find_model(args.repository, name, args.version) for name in args.model]
        for model in models:
            measured = measure(model, args.source, args.dataset)
            where = "" if args.dry_run else f" -> {record(model, measured)}"
            print(
                f"{model.name}: top-1 {measured.top1:.2f}%, top-5 {measured.top5:.2f}% on {measured.images} "
                f"photos of {args.dataset}{where}"
            )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
