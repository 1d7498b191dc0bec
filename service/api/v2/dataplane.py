"""The Open Inference Protocol (KServe V2), independent of transport: shared by HTTP and gRPC.

Tensor codecs (raw little-endian data, typed values, BYTES with 4-byte length prefixes), request
validation, the Triton classification extension and output building. The transports parse their wire
format into `InferRequest`, call `infer`, and encode the `InferResponse` it returns.

A model takes one of two inputs:
- `pixels`: UINT8 [N, 3, S, S] at the model's crop size, already preprocessed: straight to the batcher;
- `image`: BYTES [N] (or [N, 1]) of encoded images, preprocessed by the server as /classify does.
It has two outputs, `logits` and `probabilities` (FP32 [N, num_classes]); a requested output with the
parameter `classification: k` becomes BYTES [N, k] of "score:index:label", highest score first.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from service.core.engine import Engine, InferOutcome, top_k_predictions
from service.core.names import unknown_name_message
from service.errors import InvalidArgument, NotReady, UnknownModel
from service.lifecycle.records import ModelEntry
from service.schemas import Timings

PIXELS = "pixels"
IMAGE = "image"
OUTPUT_NAMES = ("logits", "probabilities")
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "effnet-serve"
EXTENSIONS = ("classification", "binary_tensor_data")

BYTES = "BYTES"
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")
# Far above any real request; stops a forged shape from asking for a huge allocation.
_MAX_ELEMENTS = 1 << 31

TensorData = np.ndarray | list[bytes]


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}")


# ---------------------------------------------------------------------------------------------- codecs
def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"tensor shape {list(dims)} has a negative dimension")
    if math.prod(dims) > _MAX_ELEMENTS:
        raise InvalidArgument(f"tensor shape {list(dims)} is too large")
    return dims


def decode_bytes_elements(raw: bytes, count: int | None = None) -> list[bytes]:
    """Split BYTES tensor data: each element is a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidArgument(f"BYTES tensor data is truncated inside the length of element {len(items)}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument(
                f"BYTES element {len(items)} declares {length} bytes but only {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(f"BYTES tensor data holds {len(items)} elements, its shape needs {count}")
    return items


def encode_bytes_elements(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> TensorData:
    """Raw (binary) tensor data: little-endian, row-major; BYTES length-prefixed."""
    dims = check_shape(shape)
    count = math.prod(dims)
    if datatype == BYTES:
        return decode_bytes_elements(raw, count)
    dtype = _numpy_dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input '{name}': {len(raw)} bytes of data, shape {list(dims)} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Any) -> TensorData:
    """Typed values (JSON `data`, nested or flat, or gRPC typed contents), row-major."""
    dims = check_shape(shape)
    count = math.prod(dims)
    if datatype == BYTES:
        items = [_bytes_element(name, v) for v in _flatten(values)]
        if len(items) != count:
            raise InvalidArgument(
                f"input '{name}' has {len(items)} elements, shape {list(dims)} needs {count}"
            )
        return items
    dtype = _numpy_dtype(name, datatype)
    try:
        array = np.asarray(values, dtype=dtype if datatype != "BOOL" else None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"input '{name}': data is not a valid {datatype} tensor ({exc})") from exc
    if array.dtype == object:
        raise InvalidArgument(f"input '{name}': data is ragged or mixes types")
    if array.size != count:
        raise InvalidArgument(f"input '{name}' has {array.size} elements, shape {list(dims)} needs {count}")
    return array.astype(dtype, copy=False).reshape(dims)


def _numpy_dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype[:32]}'")
    return dtype


def _flatten(values: Any) -> list[Any]:
    if not isinstance(values, list | tuple):
        return [values]
    flat: list[Any] = []
    for value in values:
        flat.extend(_flatten(value))
    return flat


def _bytes_element(name: str, value: Any) -> bytes:
    # JSON carries BYTES elements as UTF-8 strings (the specification); binary content such as an
    # encoded image may instead be sent as {"b64": "<base64>"}.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"input '{name}': invalid base64 in a BYTES element") from exc
    raise InvalidArgument(f"input '{name}': a BYTES element must be a string or {{\"b64\": ...}}")


# ------------------------------------------------------------------------------------------- requests
@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0  # 0: the raw tensor; k: the top-k classes as BYTES
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, name: str, parameters: Mapping[str, Any]) -> RequestedOutput:
        k = parameters.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidArgument(f"output '{name}': parameter 'classification' must be a count >= 0")
        return cls(name, k, dict(parameters))


@dataclass
class InferRequest:
    model: str
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData  # BYTES: flat list of elements, row-major
    requested: RequestedOutput | None = None


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[OutputTensor]
    timings: Timings
    # Response parameters: `route` (JSON text) for auto and cascades.
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


# --------------------------------------------------------------------------------------------- models
def parse_version(name: str, version: str) -> int | None:
    """A V2 version string ("" for the newest ready one) as a number."""
    if not version:
        return None
    if not version.isdigit() or int(version) < 1:
        raise UnknownModel(f"model '{name[:64]}' has no version '{version[:32]}'; versions are numbers >= 1")
    return int(version)


def resolve(engine: Engine, name: str, version: str = "") -> ModelEntry:
    """The ready model `name`, at `version` when one is given, else its newest ready version."""
    return engine.resolve(name, parse_version(name, version))


def model_ready(engine: Engine, name: str, version: str = "") -> bool:
    """Whether `name` (at `version`) is ready; raises UnknownModel for a name the server does not know."""
    if engine.canonical(name) is None:  # case-insensitive, as Engine.lookup
        raise UnknownModel(unknown_name_message(name, engine.readiness()))
    try:
        resolve(engine, name, version)
    except (NotReady, UnknownModel):  # loading, failed, unloaded, shutting down, or another version
        return False
    return True


def metadata_of(engine: Engine, name: str, version: str = "") -> ModelMetadata:
    entry = resolve(engine, name, version)
    ready = [str(e.version) for e in engine.lookup(entry.name).ready_versions()]
    return model_metadata(entry, ready)


def model_metadata(entry: ModelEntry, versions: Sequence[str] = ()) -> ModelMetadata:
    """V2 metadata of `entry`; `versions`: every ready version of the model (default: entry's own)."""
    assert entry.spec is not None
    versions = versions or (str(entry.version),)
    if entry.kind == "cascade":  # stages of several resolutions: encoded images only
        image_only = (TensorMetadata(IMAGE, BYTES, (-1,)),)
        outputs = tuple(
            TensorMetadata(o.name, _spec_datatype(o.dtype), tuple(o.shape))
            for o in entry.spec.outputs
            if o.name in OUTPUT_NAMES
        )
        return ModelMetadata(entry.name, tuple(versions), "ensemble", image_only, outputs)
    spec = entry.spec
    pixels = TensorMetadata(PIXELS, "UINT8", (-1, 3, spec.crop_size, spec.crop_size))
    image = TensorMetadata(IMAGE, BYTES, (-1,))
    outputs = tuple(
        TensorMetadata(o.name, _spec_datatype(o.dtype), tuple(o.shape))
        for o in spec.outputs
        if o.name in OUTPUT_NAMES
    )
    return ModelMetadata(entry.name, tuple(versions), PLATFORM, (pixels, image), outputs)


def _spec_datatype(dtype: str) -> str:
    return {"uint8": "UINT8", "float32": "FP32", "float16": "FP16"}[dtype]


# ------------------------------------------------------------------------------------------ inference
def deadline_from(parameters: Mapping[str, Any], deadline: float | None) -> float | None:
    """Combine the transport's deadline with Triton's request parameter `timeout` (microseconds)."""
    timeout_us = parameters.get("timeout")
    if isinstance(timeout_us, int) and not isinstance(timeout_us, bool) and timeout_us > 0:
        own = time.monotonic() + timeout_us / 1e6
        return own if deadline is None else min(own, deadline)
    return deadline


async def infer(engine: Engine, request: InferRequest, deadline: float | None = None) -> InferResponse:
    version = parse_version(request.model, request.version)
    entry = engine.peek(request.model, version)
    requested = _check_outputs(engine, entry, request.outputs)
    if len(request.inputs) != 1:
        raise InvalidArgument(
            f"expected exactly one input, '{PIXELS}' (UINT8 [N, 3, S, S]) or '{IMAGE}' (BYTES [N]); "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    deadline = deadline_from(request.parameters, deadline)
    budget = request.parameters.get("budget_ms")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
        raise InvalidArgument("parameter 'budget_ms' must be a number of milliseconds")
    routed = engine.router.handles(request.model)
    if routed and tensor.name == PIXELS:
        raise InvalidArgument(
            f"'{request.model}' runs models of several resolutions: send encoded images as '{IMAGE}'"
        )
    if tensor.name == PIXELS:
        outcome = await _run_pixels(engine, entry, tensor, deadline, version)
    else:
        outcome = await _run_images(engine, request.model, entry, tensor, deadline, version, budget)
    ran = outcome.model  # a new version may have taken over since `peek`: answer with the one that ran
    outputs = [_build_output(outcome, ran, r) for r in requested]
    parameters = {"route": outcome.route.model_dump_json(exclude_none=True)} if outcome.route else {}
    return InferResponse(ran.name, str(ran.version), request.id, outputs, outcome.timings, parameters)


def _check_outputs(
    engine: Engine, entry: ModelEntry, outputs: list[RequestedOutput]
) -> list[RequestedOutput]:
    if not outputs:
        return [RequestedOutput(name) for name in OUTPUT_NAMES]
    seen: set[str] = set()
    for output in outputs:
        if output.name not in OUTPUT_NAMES:
            raise InvalidArgument(
                f"unknown output '{output.name[:64]}'; model '{entry.name}' has {', '.join(OUTPUT_NAMES)}"
            )
        if output.name in seen:
            raise InvalidArgument(f"output '{output.name}' is requested twice")
        seen.add(output.name)
        if output.classification:
            engine.check_top_k(entry, output.classification)
    return outputs


async def _run_pixels(
    engine: Engine, entry: ModelEntry, tensor: InputTensor, deadline: float | None, version: int | None
) -> InferOutcome:
    assert entry.spec is not None
    size = entry.spec.crop_size
    if tensor.datatype != "UINT8" or not isinstance(tensor.data, np.ndarray):
        raise InvalidArgument(f"input '{PIXELS}' must be UINT8, got {tensor.datatype[:32]}")
    if len(tensor.shape) != 4 or tensor.shape[1:] != (3, size, size):
        raise InvalidArgument(
            f"input '{PIXELS}' of model '{entry.name}' must have shape [N, 3, {size}, {size}], "
            f"got {list(tensor.shape)}"
        )
    return await engine.infer_pixels(entry.name, tensor.data, deadline, version)


async def _run_images(
    engine: Engine,
    name: str,
    entry: ModelEntry,
    tensor: InputTensor,
    deadline: float | None,
    version: int | None,
    budget_ms: float | None,
) -> InferOutcome:
    if tensor.name != IMAGE:
        raise InvalidArgument(
            f"unknown input '{tensor.name[:64]}'; model '{entry.name}' takes '{PIXELS}' or '{IMAGE}'"
        )
    if tensor.datatype != BYTES or not isinstance(tensor.data, list):
        raise InvalidArgument(f"input '{IMAGE}' must be BYTES, got {tensor.datatype[:32]}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidArgument(f"input '{IMAGE}' must have shape [N] or [N, 1], got {list(tensor.shape)}")
    target = name if engine.router.handles(name) else entry.name
    return await engine.infer_images(target, tensor.data, deadline, version, budget_ms)


def _build_output(outcome: InferOutcome, entry: ModelEntry, requested: RequestedOutput) -> OutputTensor:
    values = outcome.outputs[requested.name]
    k = requested.classification
    if not k:
        return OutputTensor(requested.name, datatype_of(values), tuple(values.shape), values, requested)
    # Rank by this output's own values, as Triton does (logits and probabilities give the same order).
    rows = [top_k_predictions(row, entry.labels, k) for row in values]
    k = len(rows[0]) if rows else k
    items = [f"{p.score:f}:{p.class_id}:{p.label}".encode() for row in rows for p in row]
    return OutputTensor(requested.name, BYTES, (len(rows), k), items, requested)


def parse_classification(item: bytes | str) -> tuple[float, int, str]:
    """One classification element "score:index:label" (the label may itself hold colons)."""
    text = item.decode() if isinstance(item, bytes) else item
    score, index, *label = text.split(":", 2)
    return float(score), int(index), label[0] if label else ""
