"""fp32 ONNX graph -> static int8 QDQ graph with ONNX Runtime's quantisation tools.

Weights: int8, symmetric, per output channel. Activations: uint8, ranges calibrated on real photos
(`models.photos.calibration_set`, views disjoint from the agreement set) with the percentile method.
Measured on lite0 (2026-11-27): percentile 99.999, 99.99 and 99.9, and twice the calibration views,
all kept 33 of 36 agreement-set top-1 answers, changing only images fp32 itself gives p <= 0.36;
calibrating on the agreement images themselves would have kept 35 (and flattered the gate).
The uint8 `pixels` input and both outputs stay as they were: the classifier's Gemm takes int8
weights but gives float32 logits (its output is not re-quantised), and the softmax stays float32.
Left to its defaults the quantiser would round `logits` and `probabilities` to 256 levels.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from models.errors import ExportError
from models.heads import HeadNotFound, add_to_file, has_explain_outputs, strip_file

PERCENTILE = 99.999
CALIBRATION = f"activations calibrated by percentile {PERCENTILE} on the real-photo calibration views"
MINMAX_CALIBRATION = "activations calibrated by min-max on the real-photo calibration views (random weights)"
FLOAT_OUTPUT_OPS = ["Gemm", "MatMul"]


def quantize_int8(
    fp32_path: Path, calibration: np.ndarray, out_path: Path, *, vanishing_activations: bool = False
) -> str:
    """Write the int8 graph of `fp32_path` to `out_path`, calibrated on uint8 pixels (N, 3, S, S).

    `vanishing_activations`: the weights are a random init whose activations vanish (about 1e-14 in
    torchvision's EfficientNets), where the percentile histogram cannot be built; min-max calibration
    is used instead (such models serve speed and protocol tests only). Returns the calibration used.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"pixels": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    import onnx

    # The quantiser sees the graph without the explain outputs; they are added back to the int8 graph
    # (reading its dequantised weights), so their nodes stay float and its fused groups stay whole.
    stripped = out_path.with_name(out_path.stem + ".stripped.onnx")
    strip_file(fp32_path, stripped)
    prepared = out_path.with_name(out_path.stem + ".prepared.onnx")
    # The quantiser prints progress and warnings on stdout and the root logger; keep our output clean.
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # Shape inference and graph optimisation first (ORT's recommendation for static quantisation).
            quant_pre_process(str(stripped), str(prepared))
            softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
            quantize_static(
                str(prepared),
                str(out_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax
                if vanishing_activations
                else CalibrationMethod.Percentile,
                nodes_to_exclude=softmax,
                extra_options={
                    "CalibPercentile": PERCENTILE,
                    "OpTypesToExcludeOutputQuantization": FLOAT_OUTPUT_OPS,
                },
            )
    except Exception as e:  # the quantiser raises anything from ValueError to onnx errors
        raise ExportError(f"int8 quantisation of {fp32_path.name} failed: {e}") from e
    finally:
        quiet.setLevel(level)
        prepared.unlink(missing_ok=True)
        stripped.unlink(missing_ok=True)
    # An imported graph whose head was not recognised has no explain outputs: its int8 graph neither.
    explained = has_explain_outputs(onnx.load(str(fp32_path), load_external_data=False))
    try:
        if explained:
            add_to_file(out_path)
    except HeadNotFound as e:
        raise ExportError(f"cannot add features and activation maps to the int8 graph: {e}") from None
    return MINMAX_CALIBRATION if vanishing_activations else CALIBRATION
