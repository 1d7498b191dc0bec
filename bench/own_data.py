"""int8 calibrated on labelled photos vs the default calibration, on the photos held out from it:

    python -m bench.own_data --repository DEFAULT_REPO --calibrated CALIBRATED_REPO --model lite0 \\
        --photos ../shared/imagenet-sample/labels.csv

DEFAULT_REPO holds `lite0` and `lite0-int8` calibrated on the scikit-image views (`make models`);
CALIBRATED_REPO holds `lite0-int8` exported with `--calibration PHOTOS`. Both int8 graphs and the fp32
one run in ONNX Runtime on the held-out fifth of PHOTOS (service.client.dataset.split: the photos the
calibrated graph never saw) and on all of them; prints top-1 agreement with fp32 and top-1 against the
labels. Writes bench/results/own-data-calibration-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.labelled import find_model, pixels, probabilities, read_labelled, targets, top_k_accuracy
from service.client.dataset import held_out
from service.preprocess.images import PreprocessSpec

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.own_data", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--calibrated", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the fp32 model; its int8 is MODEL-int8")
    parser.add_argument("--photos", type=Path, required=True)
    args = parser.parse_args(argv)
    fp32 = find_model(args.repository, args.model)
    graphs = {
        "fp32": fp32,
        "int8 (scikit-image calibration)": find_model(args.repository, f"{args.model}-int8"),
        "int8 (calibrated on the photos)": find_model(args.calibrated, f"{args.model}-int8"),
    }
    samples = read_labelled(args.photos)
    truth = targets(samples, fp32.labels)
    mask = [held_out(s) for s in samples]
    images = pixels(samples, PreprocessSpec.from_model_spec(fp32.spec))
    probs = {name: probabilities(model, images, threads=2) for name, model in graphs.items()}
    reference = probs["fp32"].argmax(axis=1)
    report: dict[str, object] = {"model": args.model, "photos": str(args.photos), "images": len(samples)}
    for part, rows in (
        ("held_out", [i for i, m in enumerate(mask) if m]),
        ("all", list(range(len(samples)))),
    ):
        figures = {}
        for name, p in probs.items():
            figures[name] = {
                "top1": round(top_k_accuracy(p[rows], truth[rows], 1), 2),
                "top1_agreement_with_fp32": round(
                    float(100 * (p[rows].argmax(1) == reference[rows]).mean()), 2
                ),
            }
        report[part] = {"images": len(rows), **figures}
        print(f"{args.model} {part} ({len(rows)} photos): {json.dumps(figures)}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"own-data-calibration-{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
