"""A tiny real ONNX model repository entry (no torch): uint8 pixels -> mean colour -> 4 classes.

Used by unit and robustness tests that need a real ONNX Runtime session in milliseconds."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from service.model_spec import ModelSpec
from service.runtime.session import RuntimeOptions
from service.settings import Settings

SIZE = 16
CLASSES = 4


TINY_WEIGHTS = np.array([[1, 0, 0, 0.5], [0, 1, 0, 0.5], [0, 0, 1, 0.5]], dtype=np.float32)
DEFAULT_WEIGHTS = tuple(tuple(float(v) for v in row) for row in TINY_WEIGHTS)


def tiny_graph(
    padding_bytes: int = 0, weights_rows: tuple[tuple[float, ...], ...] = DEFAULT_WEIGHTS
) -> onnx.ModelProto:
    """uint8 (N,3,S,S) -> mean colour per channel -> a fixed 3x4 linear layer -> logits, softmax.
    `padding_bytes` adds an unused initializer, making the file (and what a load holds) that much bigger;
    `weights_rows` replaces the linear layer (smaller weights: less confident answers)."""
    weights = np.array(weights_rows, dtype=np.float32)
    nodes = [
        helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
        ],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("weights", TensorProto.FLOAT, [3, CLASSES], weights.flatten().tolist()),
            *(
                [
                    helper.make_tensor(
                        "padding", TensorProto.UINT8, [padding_bytes], b"\x01" * padding_bytes, raw=True
                    )
                ]
                if padding_bytes
                else []
            ),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def write_model(
    repository: Path,
    name: str,
    weights_kind: str = "imagenet",
    version: int = 1,
    padding_bytes: int = 0,
    *,
    accuracy: float | None = None,
    gmacs: float = 0.001,
    labels: tuple[str, ...] = ("red", "green", "blue", "grey"),
    weights_rows: tuple[tuple[float, ...], ...] = DEFAULT_WEIGHTS,
    explain: bool = False,
) -> Path:
    """A tiny model version folder; `accuracy` declares an ImageNet top-1 (for `auto`), `gmacs` sets the
    size `auto` assumes before it has measured the model. `explain`: with `features` (the mean colour)
    and class activation maps (models/heads.py; the "feature map" is the 16 x 16 pixels themselves)."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    graph = tiny_graph(padding_bytes, weights_rows)
    if explain:
        from models.heads import add_explain_outputs

        graph, _ = add_explain_outputs(graph)
    data = graph.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    weights = (
        {"kind": "random", "seed": 0}
        if weights_kind == "random"
        else {"kind": weights_kind, "source": "test", "sha256": "0" * 64}
    )
    spec = ModelSpec(
        name=name,
        version=version,
        variant=name,
        architecture="tiny",
        crop_size=SIZE,
        resize_size=SIZE + 4,
        interpolation="bilinear",
        normalization={"mean": (0, 0, 0), "std": (1, 1, 1)},
        inputs=[{"name": "pixels", "dtype": "uint8", "shape": (-1, 3, SIZE, SIZE)}],
        outputs=[
            {"name": "logits", "dtype": "float32", "shape": (-1, CLASSES)},
            {"name": "probabilities", "dtype": "float32", "shape": (-1, CLASSES)},
            *(
                [
                    {"name": "features", "dtype": "float32", "shape": (-1, 3)},
                    {"name": "cam", "dtype": "float32", "shape": (-1, -1, SIZE, SIZE)},
                    {"name": "cam_classes", "dtype": "int64", "shape": (-1, -1)},
                ]
                if explain
                else []
            ),
        ],
        num_classes=CLASSES,
        weights=weights,
        parameters=12,
        gmacs=gmacs,
        opset=18,
        exporter={"onnx": onnx.__version__},
        onnx_sha256=hashlib.sha256(data).hexdigest(),
        accuracy=None if accuracy is None else {"imagenet_top1": accuracy, "source": "test"},
    )
    (folder / "model.json").write_text(spec.to_json())
    return folder


def png(colour: tuple[int, int, int] = (250, 5, 5), size: tuple[int, int] = (20, 20)) -> bytes:
    """A solid-colour PNG: the tiny model answers its dominant channel (red, green, blue) or grey."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_settings(repository: Path, **overrides: Any) -> Settings:
    """Settings fit for tiny models in tests: one thread, one warm-up run, no digest cache on disk."""
    values: dict[str, Any] = dict(
        repository=repository, warmup_runs=1, intra_op_threads=1, hash_cache=None, drain_timeout_s=5
    )
    values.update(overrides)
    return Settings(**values)


def ort_options(device: str = "cpu") -> RuntimeOptions:
    """ONNX Runtime options for tests of one session: one thread, no spinning, on `device`."""
    return RuntimeOptions(
        device=device,
        intra_op_threads=1,
        inter_op_threads=1,
        allow_spinning=False,
        graph_optimization="all",
        cuda_device_id=0,
        cudnn_conv_algo_search="HEURISTIC",
    )
