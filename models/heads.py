"""Explain outputs for any EfficientNet-shaped ONNX graph: `features` and class activation maps.

An EfficientNet head is: last feature map A (N, C, h, w) -> global average pool -> (flatten) ->
linear layer (W: K x C, bias b) -> logits. So the pooled vector is the embedding, and the class
activation map of class k is sum_c W[k, c] * A_c (its mean over the cells plus b[k] is the logit).
`add_explain_outputs` finds that head in a graph (torch exports, their fp16 and int8 QDQ derivations,
imported graphs) and adds, beside `logits` and `probabilities`:

- `features`     float32 (N, C): the pooled vector;
- `cam`          float32 (N, m, h, w): the maps of the classes in `cam_classes`;
- `cam_classes`  int64 (N, m): which classes those are;

and one optional input, `cam_class_ids` int64 (1 or N, m): each row lists the classes to map, -1 in
column j meaning "the class ranked j + 1": [[-1, -1, -1]] maps the top 3, [[281]] maps class 281, and
rows of one batch may differ ([[-1, -1], [281, -1]]: the second row's -1 is its runner-up).
Its default is empty (1, 0): no map. That default matters: ONNX Runtime (1.32, measured) runs
every node of the graph whatever outputs a run asks for, so what a request that asks for nothing
new pays is what the added nodes cost at m = 0 (a flatten, two casts of the last feature map and a
TopK of 0 over the probabilities).

Only ONNX here (no torch): `python -m models.upgrade` upgrades graphs already in a repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from service.model_spec import TensorSpec

FEATURES = "features"
CAM = "cam"
CAM_CLASSES = "cam_classes"
CAM_CLASS_IDS = "cam_class_ids"
EXPLAIN_OUTPUTS = (FEATURES, CAM, CAM_CLASSES)
PREFIX = "explain/"  # every node and tensor the pass adds, so `strip_explain_outputs` can take them out

# Ops between the pooled vector and the classifier that do not change its values.
_PASS_THROUGH = {
    "Flatten",
    "Reshape",
    "Squeeze",
    "Identity",
    "Dropout",
    "Cast",
    "QuantizeLinear",
    "DequantizeLinear",
}


class HeadNotFound(ValueError):
    """The graph has no global-average-pool + linear head feeding `logits`."""


@dataclass(frozen=True)
class Head:
    feature_map: str  # A, the pool's input (N, C, h, w)
    pooled: str  # the pool's output ((N, C) or (N, C, 1, 1))
    weight: np.ndarray  # float32 (K, C)
    weight_name: str | None  # a float32 (K, C) initializer already in the graph, reusable as is
    logits: str


@dataclass(frozen=True)
class ExplainShapes:
    """What `add_explain_outputs` added: feature size and map grid (None where the graph leaves it open)."""

    channels: int
    height: int | None
    width: int | None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is an initializer, a Constant, or a DequantizeLinear/Cast/Transpose
        of one (the int8 and fp16 graphs' weights); else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Cast":
            value = self.constant(node.input[0])
            return None if value is None else value.astype(np.float32)
        if node.op_type == "Transpose":
            value = self.constant(node.input[0])
            perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
            return None if value is None else np.transpose(value, perm[0] if perm else None)
        if node.op_type == "DequantizeLinear":
            return self._dequantize(node)
        return None

    def _dequantize(self, node: onnx.NodeProto) -> np.ndarray | None:
        values = [self.constant(n) if n else None for n in node.input]
        x, scale = values[0], values[1]
        if x is None or scale is None:
            return None
        zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((x.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(
            np.float32
        )

    def attribute(self, node: onnx.NodeProto, name: str, default: int) -> int:
        return next((int(a.i) for a in node.attribute if a.name == name), default)


def _pools_spatially(g: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes_attr = [list(a.ints) for a in node.attribute if a.name == "axes"]
    if axes_attr:
        axes = axes_attr[0]
    elif len(node.input) > 1 and node.input[1]:
        value = g.constant(node.input[1])
        axes = [] if value is None else [int(v) for v in value.ravel()]
    else:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


def find_head(model: onnx.ModelProto, logits: str = "logits") -> Head:
    """Walk back from `logits` to the linear layer, then to the global average pool before it."""
    g = _Graph(model)
    name = logits
    weight: np.ndarray | None = None
    weight_name: str | None = None
    data = ""
    for _ in range(16):
        node = g.producer.get(name)
        if node is None:
            break
        if node.op_type in {"Identity", "Cast"}:
            name = node.input[0]
            continue
        if node.op_type == "Add":  # the bias of MatMul + Add
            constant_side = [i for i in node.input if g.constant(i) is not None]
            if len(constant_side) != 1:
                break
            name = next(i for i in node.input if i != constant_side[0])
            continue
        if node.op_type == "Gemm":
            w = g.constant(node.input[1])
            if w is None or g.attribute(node, "transA", 0):
                break
            transposed = bool(g.attribute(node, "transB", 0))
            weight = w if transposed else w.T
            init = g.initializers.get(node.input[1])
            if transposed and init is not None and init.data_type == TensorProto.FLOAT:
                weight_name = node.input[1]
            data = node.input[0]
        elif node.op_type == "MatMul":
            w = g.constant(node.input[1])
            if w is None or w.ndim != 2:
                break
            weight, data = w.T, node.input[0]
        break
    if weight is None:
        raise HeadNotFound(f"no linear layer with constant weights produces {logits!r}")
    for _ in range(16):
        node = g.producer.get(data)
        if node is None:
            break
        if _pools_spatially(g, node):
            return Head(
                feature_map=node.input[0],
                pooled=node.output[0],
                weight=np.ascontiguousarray(weight, dtype=np.float32),
                weight_name=weight_name,
                logits=logits,
            )
        if node.op_type not in _PASS_THROUGH:
            break
        data = node.input[0]
    raise HeadNotFound("the linear layer before the logits is not fed by a global average pool")


def _tap(g: _Graph, name: str, added: list[onnx.NodeProto]) -> str:
    """A float view of `name` that adds no consumer to a quantised group: ONNX Runtime fuses
    DequantizeLinear -> op -> QuantizeLinear only when the DequantizeLinear has one consumer, so where
    `name` comes out of one we read from a copy of it instead."""
    node = g.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return name
    copy = helper.make_node(
        "DequantizeLinear", list(node.input), [f"{PREFIX}{name}"], name=f"{PREFIX}dq/{name}"
    )
    copy.attribute.extend(node.attribute)
    added.append(copy)
    return copy.output[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _grid(model: onnx.ModelProto, feature_map: str) -> tuple[int | None, int | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a nicety: a graph it cannot type still gets the outputs
        return None, None
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.name == feature_map:
            dims = _dims(value)
            if len(dims) == 4:
                h, w = dims[2], dims[3]
                return (
                    h if isinstance(h, int) and h > 0 else None,
                    w if isinstance(w, int) and w > 0 else None,
                )
    return None, None


def _known(dim: int | str) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def has_explain_outputs(model: onnx.ModelProto) -> bool:
    return any(o.name in EXPLAIN_OUTPUTS for o in model.graph.output)


def strip_explain_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as it was before `add_explain_outputs` (a copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep_nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    for field, keep in (
        (graph.output, lambda v: v.name not in EXPLAIN_OUTPUTS),
        (graph.input, lambda v: v.name != CAM_CLASS_IDS),
        (graph.initializer, lambda v: v.name != CAM_CLASS_IDS and not v.name.startswith(PREFIX)),
        (graph.value_info, lambda v: not v.name.startswith(PREFIX) and v.name not in EXPLAIN_OUTPUTS),
    ):
        kept = [v for v in field if keep(v)]
        del field[:]
        field.extend(kept)
    return out


def add_explain_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ExplainShapes]:
    """A copy of `model` with `features`, `cam`, `cam_classes` and the `cam_class_ids` input added.

    Idempotent: a graph that has them already gets them rebuilt. Raises `HeadNotFound` for graphs
    whose logits do not come from a global average pool and one linear layer.
    """
    model = strip_explain_outputs(model) if has_explain_outputs(model) else _copy(model)
    head = find_head(model)
    g = _Graph(model)
    batch = next((_dims(o)[0] for o in model.graph.output if o.name == head.logits), "N")
    channels = int(head.weight.shape[1])
    height, width = _grid(model, head.feature_map)
    added: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        label = output if output.startswith(PREFIX) else f"{PREFIX}{output}"
        added.append(helper.make_node(op, inputs, [output], name=label, **attrs))
        return output

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, f"{PREFIX}{name}"))
        return f"{PREFIX}{name}"

    pooled = _tap(g, head.pooled, added)
    pooled_float = node("Cast", [pooled], f"{PREFIX}pooled_float", to=TensorProto.FLOAT)
    node("Flatten", [pooled_float], FEATURES, axis=1)

    feature_map = node(
        "Cast", [_tap(g, head.feature_map, added)], f"{PREFIX}feature_map", to=TensorProto.FLOAT
    )
    flat = node(
        "Reshape", [feature_map, const("flat_shape", np.array([0, 0, -1], np.int64))], f"{PREFIX}flat"
    )
    # Rank by the probabilities where the graph has them: that is the order the service reports its
    # predictions in, ties (probabilities that underflow to 0) included, lower class id first.
    has_probabilities = any(o.name == "probabilities" for o in model.graph.output)
    scores = "probabilities" if has_probabilities else head.logits
    logits = node("Cast", [scores], f"{PREFIX}scores", to=TensorProto.FLOAT)
    k = node("Shape", [CAM_CLASS_IDS], f"{PREFIX}k", start=1, end=2)
    _, top = f"{PREFIX}top_values", f"{PREFIX}top"
    added.append(helper.make_node("TopK", [logits, k], [_, top], name=f"{PREFIX}topk", axis=1))
    zero = const("zero", np.array(0, np.int64))
    mapped = node("Less", [CAM_CLASS_IDS, zero], f"{PREFIX}use_top")
    node("Where", [mapped, top, CAM_CLASS_IDS], CAM_CLASSES)
    weight = head.weight_name or const("weight", head.weight)
    rows = node("Gather", [weight, CAM_CLASSES], f"{PREFIX}rows", axis=0)  # (N, m, C)
    maps = node("MatMul", [rows, flat], f"{PREFIX}maps")  # (N, m, h*w)
    grid_shape = node("Shape", [feature_map], f"{PREFIX}grid", start=2, end=4)
    first = node("Shape", [feature_map], f"{PREFIX}n", start=0, end=1)
    shape = node("Concat", [first, k, grid_shape], f"{PREFIX}cam_shape", axis=0)
    node("Reshape", [maps, shape], CAM)

    graph = model.graph
    graph.node.extend(added)
    graph.initializer.extend([*inits, numpy_helper.from_array(np.zeros((1, 0), np.int64), CAM_CLASS_IDS)])
    graph.input.append(helper.make_tensor_value_info(CAM_CLASS_IDS, TensorProto.INT64, ["rows", "k"]))
    graph.output.extend(
        [
            helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [batch, channels]),
            helper.make_tensor_value_info(CAM, TensorProto.FLOAT, [batch, "k", height or "h", width or "w"]),
            helper.make_tensor_value_info(CAM_CLASSES, TensorProto.INT64, [batch, "k"]),
        ]
    )
    _topological_sort(graph)
    return model, ExplainShapes(channels=channels, height=height, width=width)


def add_to_file(path: Path) -> ExplainShapes:
    """Rewrite the ONNX file at `path` with the explain outputs (in place)."""
    model, shapes = add_explain_outputs(onnx.load(str(path)))
    onnx.save(model, str(path))
    return shapes


def strip_file(source: Path, target: Path) -> None:
    """Write `source` without the explain outputs to `target` (what a quantiser should see)."""
    onnx.save(strip_explain_outputs(onnx.load(str(source))), str(target))


def output_specs(path: Path) -> list[TensorSpec]:
    """`model.json` entries for the explain outputs of the graph at `path` (none when it has none)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except DecodeError:  # not an ONNX file (the export tests' stand-in graphs): nothing to record
        return []
    specs = []
    for value in graph.output:
        if value.name in EXPLAIN_OUTPUTS:
            dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in _dims(value))
            int64 = value.type.tensor_type.elem_type == TensorProto.INT64
            specs.append(TensorSpec(name=value.name, dtype="int64" if int64 else "float32", shape=dims))
    return specs


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _topological_sort(graph: onnx.GraphProto) -> None:
    """ONNX wants nodes in topological order; the added ones read tensors from the middle of the graph."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise HeadNotFound("cannot order the graph's nodes (a cycle, or an input nothing produces)")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
