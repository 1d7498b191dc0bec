"""The export-time agreement gate: a lower-precision graph against the fp32 graph it came from.

Both graphs run in ONNX Runtime (CPU) on the real-photo set (`models.photos`). What is measured goes
into `model.json` (`service.model_spec.Agreement`); an export that fails its gate publishes nothing.

Gates:
- fp16, real weights: 100 % top-1 agreement. fp16 rounding moves logits by about 1e-2 at most; a
  changed top-1 on these photos means a broken graph, not rounding.
- int8, real weights: no top-1 lost on an image the fp32 model is confident about (top probability
  >= CONFIDENT), and everywhere else int8's top-1 among fp32's top INT8_WITHIN_TOP classes. The
  published int8 EfficientNet-Lite models lose 0.6-0.8 points of ImageNet top-1, so int8 does change
  answers, but only where fp32 itself hesitates between classes. Most of these photos are such images
  for ImageNet classifiers (coins, a clock, the moon, the Hubble field: fp32 top probability 0.06-0.4),
  so overall top-1 agreement says more about the photos than about the graph and is recorded, not
  gated. Measured 2026-11-27 (percentile calibration): lite0 33/36 overall, lite1 28/36, all changes at
  fp32 p <= 0.36 and within fp32's top 4; 100 % on the confident images (11 and 10 of them).
  (The reference TFLite int8 models themselves cannot be run here: no model downloads.)
- random weights: no label gate (their labels mean nothing); only the largest |logit delta| is
  recorded. Every precision must give finite outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ExportError
from models.photos import AGREEMENT_SET, PhotoSet
from service.model_spec import Agreement, Precision

CONFIDENT = 0.5
INT8_WITHIN_TOP = 5
BATCH = 4

GATES: dict[Precision, str] = {
    "fp16": "top-1 agreement must be 100%",
    "int8": (
        f"top-1 agreement 100% on images where the fp32 top probability is at least {CONFIDENT}, and "
        f"int8's top-1 within fp32's top {INT8_WITHIN_TOP} on every image"
    ),
}
RANDOM_GATE = "none (random weights: labels are meaningless); outputs must be finite"


class AgreementFailed(ExportError):
    """A lower-precision graph disagrees with its fp32 source beyond its gate."""


@dataclass(frozen=True)
class Outputs:
    logits: np.ndarray
    probabilities: np.ndarray


def run_graph(path: Path, pixels: np.ndarray) -> Outputs:
    import onnxruntime as ort

    from service.runtime.int8_kernels import faithful_int8

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The graph as the server will run it on this CPU (its int8 kernels may saturate: int8_kernels.py).
    session = ort.InferenceSession(str(path), faithful_int8(options), providers=["CPUExecutionProvider"])
    logits, probabilities = [], []
    for start in range(0, len(pixels), BATCH):
        out = session.run(["logits", "probabilities"], {"pixels": pixels[start : start + BATCH]})
        logits.append(out[0])
        probabilities.append(out[1])
    return Outputs(np.concatenate(logits), np.concatenate(probabilities))


def measure(
    reference: Outputs,
    candidate: Outputs,
    photos: PhotoSet,
    precision: Precision,
    real_weights: bool,
    image_set: str = AGREEMENT_SET,
) -> Agreement:
    """Compare, record and enforce the gate; raises AgreementFailed (naming the images) when it fails."""
    for label, out in (("fp32", reference), (precision, candidate)):
        if not (np.isfinite(out.logits).all() and np.isfinite(out.probabilities).all()):
            raise AgreementFailed(f"the {label} graph gives non-finite outputs on the real-photo set")
    logit_delta = float(np.abs(candidate.logits - reference.logits).max())
    if not real_weights:
        return Agreement(
            images=len(photos.names),
            image_set=image_set,
            max_abs_logit_delta=logit_delta,
            gate=RANDOM_GATE,
        )
    expected = reference.logits.argmax(1)
    got = candidate.logits.argmax(1)
    same = expected == got
    top1 = float(same.mean())
    confidence = reference.probabilities.max(1)
    confident = confidence >= CONFIDENT
    record = Agreement(
        images=len(photos.names),
        image_set=image_set,
        top1_agreement=top1,
        max_abs_probability_delta=float(np.abs(candidate.probabilities - reference.probabilities).max()),
        max_abs_logit_delta=logit_delta,
        confident_images=int(confident.sum()),
        confident_top1_agreement=float(same[confident].mean()) if confident.any() else None,
        gate=GATES[precision],
    )
    if precision == "fp16":
        failed = top1 < 1.0
    else:
        # Rank of the candidate's answer among the reference's classes (0: the reference's top-1).
        rank = (reference.logits > reference.logits[np.arange(len(got)), got][:, None]).sum(1)
        failed = bool((~same & confident).any() or (rank >= INT8_WITHIN_TOP).any())
    if failed:
        flips = "; ".join(
            f"{photos.names[i]}: {expected[i]} (p={confidence[i]:.2f}) -> {got[i]}"
            for i in np.flatnonzero(~same)
        )
        raise AgreementFailed(
            f"{precision} graph fails its agreement gate ({GATES[precision]}): top-1 agreement "
            f"{top1:.1%} on {len(same)} photos ({image_set[:80]}); "
            f"changed (fp32 class, p -> {precision}): {flips}"
        )
    return record
