"""Torch module -> ONNX file: export with a dynamic batch axis, count MACs, verify against ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.errors import ExportError
from models.heads import CAM_CLASS_IDS, EXPLAIN_OUTPUTS, HeadNotFound, add_to_file

OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")
# Relative to the largest |logit|: elementwise relative error is meaningless for logits near zero.
VERIFY_TOLERANCE = 1e-4


def export_onnx(module: nn.Module, crop_size: int, path: Path) -> None:
    """Export `module` (uint8 (N, 3, S, S) -> logits, probabilities) as one self-contained ONNX file.

    We use torch's dynamo exporter: unlike the TorchScript one it folds the same-padding of the Lite
    architecture into Conv and leaves no Identity/Constant clutter; batch is a symbolic dimension.
    """
    # torch.export specialises sizes 0 and 1, so trace with batch 2.
    example = torch.zeros((2, 3, crop_size, crop_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter prints progress lines on stdout; they would interleave with ours.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    try:
        add_to_file(path)
    except HeadNotFound as e:
        raise ExportError(f"cannot add features and activation maps to {path.name}: {e}") from None
    check_graph(path, crop_size)


def check_graph(path: Path, crop_size: int) -> None:
    """The ONNX checker, then our interface: uint8 `pixels` in, float32 `logits`/`probabilities` out,
    whatever precision the graph computes in."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    _check_signature(model, crop_size)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _check_signature(model: onnx.ModelProto, crop_size: int) -> None:
    inputs = [i for i in model.graph.input if i.name != CAM_CLASS_IDS]
    outputs = [o.name for o in model.graph.output if o.name not in EXPLAIN_OUTPUTS]
    if [i.name for i in inputs] != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ExportError(f"exported graph has inputs {[i.name for i in inputs]} and outputs {outputs}")
    pixels = inputs[0]
    dims = _dims(pixels)
    if (
        pixels.type.tensor_type.elem_type != onnx.TensorProto.UINT8
        or not isinstance(dims[0], str)
        or dims[1:] != [3, crop_size, crop_size]
    ):
        raise ExportError(f"exported input is not uint8 (batch, 3, {crop_size}, {crop_size}): {dims}")
    for out in model.graph.output:
        if out.name == "cam_classes":
            continue
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or not isinstance(_dims(out)[0], str):
            raise ExportError(f"exported output {out.name} is not float32 with a dynamic batch axis")


@dataclass(frozen=True)
class Reference:
    """One torch forward pass at batch 1: its MAC count and its outputs, to check the ONNX file against."""

    macs: int
    pixels: np.ndarray
    logits: np.ndarray


def reference_run(module: nn.Module, crop_size: int, seed: int = 0) -> Reference:
    """Count Conv2d + Linear multiply-accumulates with forward hooks while computing reference outputs."""
    macs = 0

    def conv_hook(layer: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        assert isinstance(layer, nn.Conv2d)
        kh, kw = layer.kernel_size
        macs += output.numel() * (layer.in_channels // layer.groups) * kh * kw

    def linear_hook(layer: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        assert isinstance(layer, nn.Linear)
        macs += output.numel() * layer.in_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, 3, crop_size, crop_size), dtype=torch.uint8, generator=generator)
    try:
        with torch.inference_mode():
            logits, _ = module(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return Reference(macs=macs, pixels=pixels.numpy(), logits=logits.numpy())


def verify(path: Path, reference: Reference) -> float:
    """Run the ONNX file in ONNX Runtime (CPU) on the reference batch; return the relative max error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: reference.pixels})
    scale = float(np.abs(reference.logits).max())
    error = float(np.abs(logits - reference.logits).max()) / scale if scale > 0 else 0.0
    if error > VERIFY_TOLERANCE or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ExportError(f"ONNX Runtime disagrees with torch on {path.name}: relative error {error:.2e}")
    return error
