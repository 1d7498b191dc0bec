"""Any ONNX image classifier -> our interface: uint8 `pixels` (N, 3, S, S) in, float32 `logits` and
`probabilities` out, with the classifier's own scaling, normalisation and layout done inside the graph.

`inspect` reads what the graph takes and gives and refuses what cannot be served (one line each);
`wrap` adds the front (Cast, subtract, multiply, NHWC transpose) and the back (logits, softmax).
No torch here: the importer works from an ONNX file alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.errors import ExportError
from models.graph import INPUT_NAME, OUTPUT_NAMES

Layout = Literal["nchw", "nhwc"]
FLOATS: dict[int, type[np.floating]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
}
BATCH = "batch"
_PREFIX = "effnet_import/"


class GraphRefused(ExportError):
    """The graph is not one image in, one score vector out."""


@dataclass(frozen=True)
class Interface:
    input: str
    input_type: int  # TensorProto elem type (a float type)
    dims: tuple[int | str, ...]  # as declared; str for symbolic
    output: str
    output_dims: tuple[int | str, ...]
    softmax_input: str | None  # the graph ends in Softmax: its input is the logits
    fixed_batch: int | None  # a declared batch size to be made dynamic

    def spatial(self, layout: Layout) -> tuple[int | str, int | str]:
        return (self.dims[2], self.dims[3]) if layout == "nchw" else (self.dims[1], self.dims[2])


@dataclass(frozen=True)
class Front:
    """What the graph expects from pixels p in 0..255: (p / 255 - mean) / std * scale, in `layout`."""

    layout: Layout
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float

    def apply(self, pixels: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
        """The same arithmetic in numpy: what the wrapped graph feeds the original one."""
        offset, factor = self.offset_factor()
        x = (pixels.astype(np.float32) - offset.reshape(1, 3, 1, 1)) * factor.reshape(1, 3, 1, 1)
        if self.layout == "nhwc":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x.astype(dtype))

    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) in model.json's terms, (x - mean) / std for x = p / 255."""
        std = tuple(s / self.scale for s in self.std)
        return self.mean, (std[0], std[1], std[2])

    def offset_factor(self) -> tuple[np.ndarray, np.ndarray]:
        offset = np.array([m * 255.0 for m in self.mean], dtype=np.float32)
        factor = np.array([self.scale / (s * 255.0) for s in self.std], dtype=np.float32)
        return offset, factor


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
        for d in value.type.tensor_type.shape.dim
    )


def _shape_text(dims: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def inspect(model: onnx.ModelProto, layout: Layout, name: str) -> Interface:
    graph = model.graph
    initialised = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialised]
    if len(inputs) != 1:
        listed = ", ".join(i.name for i in inputs) or "none"
        raise GraphRefused(
            f"{name} has {len(inputs)} inputs ({listed}); an image classifier takes exactly one"
        )
    value = inputs[0]
    if not value.type.HasField("tensor_type"):
        raise GraphRefused(f"{name}: input {value.name!r} is not a tensor")
    elem = value.type.tensor_type.elem_type
    if elem not in FLOATS:
        kind = TensorProto.DataType.Name(elem).lower()
        raise GraphRefused(f"{name}: input {value.name!r} is {kind}, not float: not an image input")
    if not value.type.tensor_type.HasField("shape"):
        raise GraphRefused(f"{name}: input {value.name!r} declares no shape; an image input is rank 4")
    dims = _dims(value)
    if len(dims) != 4:
        raise GraphRefused(
            f"{name}: input {value.name!r} has rank {len(dims)} {_shape_text(dims)}; an image input is "
            "rank 4, (batch, 3, H, W) or (batch, H, W, 3)"
        )
    channels = dims[1] if layout == "nchw" else dims[3]
    if isinstance(channels, int) and channels != 3:
        other = "nhwc" if layout == "nchw" else "nchw"
        hint = (
            f" (it looks {other}: try --layout {other})"
            if (dims[3] if layout == "nchw" else dims[1]) == 3
            else ""
        )
        raise GraphRefused(
            f"{name}: input {value.name!r} {_shape_text(dims)} has {channels} channels where --layout "
            f"{layout} puts them, not 3 (RGB): not an image input{hint}"
        )
    batch = dims[0]
    fixed = batch if isinstance(batch, int) and batch > 0 else None
    if len(graph.output) != 1:
        listed = ", ".join(o.name for o in graph.output)
        raise GraphRefused(
            f"{name} has {len(graph.output)} outputs ({listed}); one (logits or probabilities) is expected"
        )
    output = graph.output[0]
    out_dims = _dims(output) if output.type.tensor_type.HasField("shape") else ()
    if out_dims and len(out_dims) != 2:
        raise GraphRefused(
            f"{name}: output {output.name!r} has shape {_shape_text(out_dims)}; "
            "a classifier gives (batch, classes)"
        )
    if output.type.tensor_type.elem_type not in FLOATS:
        raise GraphRefused(f"{name}: output {output.name!r} is not a float tensor")
    producer = next((n for n in graph.node if output.name in n.output), None)
    softmax_input = None
    if producer is not None and producer.op_type == "Softmax":
        axis = next((a.i for a in producer.attribute if a.name == "axis"), -1 if opset(model) >= 13 else 1)
        if axis in (1, -1):
            softmax_input = producer.input[0]
    return Interface(value.name, elem, dims, output.name, out_dims, softmax_input, fixed)


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for collection in (graph.input, graph.output, graph.value_info):
        for value in collection:
            if value.name == old:
                value.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new


def _free_our_names(graph: onnx.GraphProto) -> None:
    """The wrapper's names must be ours alone: rename any tensor the original graph calls that."""
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)} | {
        t.name for t in graph.initializer
    }
    for ours in (INPUT_NAME, *OUTPUT_NAMES):
        if ours in used:
            _rename(graph, ours, _renamed(ours))


def _renamed(name: str) -> str:
    return _PREFIX + "original/" + name if name in (INPUT_NAME, *OUTPUT_NAMES) else name


def wrap(
    model: onnx.ModelProto, interface: Interface, front: Front, crop: int, classes: int
) -> onnx.ModelProto:
    """A new model: uint8 `pixels` -> front -> the original graph -> `logits`, `probabilities`."""
    wrapped = copy.deepcopy(model)
    graph = wrapped.graph
    _free_our_names(graph)
    # The batch axis becomes symbolic everywhere it is declared; inner shapes are re-inferred by ORT.
    del graph.value_info[:]
    original_input = _renamed(interface.input)
    original_output = graph.output[0].name
    logits_source = _renamed(interface.softmax_input) if interface.softmax_input else original_output
    if interface.softmax_input is not None and not any(original_output in n.input for n in graph.node):
        graph.node.remove(next(n for n in graph.node if original_output in n.output))
    for value in list(graph.input):
        if value.name == original_input:
            graph.input.remove(value)
    del graph.output[:]

    offset, factor = front.offset_factor()
    graph.initializer.extend(
        [
            numpy_helper.from_array(offset.reshape(1, 3, 1, 1), _PREFIX + "offset"),
            numpy_helper.from_array(factor.reshape(1, 3, 1, 1), _PREFIX + "factor"),
        ]
    )
    front_nodes = [
        helper.make_node("Cast", [INPUT_NAME], [_PREFIX + "float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [_PREFIX + "float", _PREFIX + "offset"], [_PREFIX + "centred"]),
        helper.make_node("Mul", [_PREFIX + "centred", _PREFIX + "factor"], [_PREFIX + "scaled"]),
    ]
    last = _PREFIX + "scaled"
    if front.layout == "nhwc":
        front_nodes.append(helper.make_node("Transpose", [last], [_PREFIX + "nhwc"], perm=[0, 2, 3, 1]))
        last = _PREFIX + "nhwc"
    cast_to = interface.input_type
    front_nodes.append(
        helper.make_node("Cast", [last], [original_input], to=cast_to)
        if cast_to != TensorProto.FLOAT
        else helper.make_node("Identity", [last], [original_input])
    )
    back_nodes = [
        helper.make_node("Cast", [logits_source], [OUTPUT_NAMES[0]], to=TensorProto.FLOAT),
        helper.make_node("Softmax", [OUTPUT_NAMES[0]], [OUTPUT_NAMES[1]], axis=1),
    ]
    nodes = front_nodes + list(graph.node) + back_nodes
    del graph.node[:]
    graph.node.extend(_topological(nodes, {INPUT_NAME} | {t.name for t in graph.initializer}))
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH, 3, crop, crop])
    )
    graph.output.extend(
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, classes]) for name in OUTPUT_NAMES]
    )
    return wrapped


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each one's inputs come first (ORT's float16 converter appends the casts
    it inserts at the end of the list). Nodes that can never run keep their relative order at the end."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            break
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(n is not r for r in runnable)]
    return ordered + pending


def with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its input's and output's first axis made symbolic (value_info dropped)."""
    dynamic = copy.deepcopy(model)
    del dynamic.graph.value_info[:]
    initialised = {t.name for t in dynamic.graph.initializer}
    for value in (*dynamic.graph.input, *dynamic.graph.output):
        if value.name in initialised or not value.type.tensor_type.HasField("shape"):
            continue
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH
    return dynamic
