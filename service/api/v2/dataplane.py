"""The Open Inference Protocol (KServe V2) data plane, independent of transport: shared by HTTP and gRPC.

The transports parse their wire format into `InferRequest` (tensors decoded by tensors.py), admit the
target through the engine (before reading the body where they can), call `infer`, and encode the
`InferResponse` it returns. This module checks what only V2 has: its inputs and outputs, its request
parameters, and the Triton classification extension.

A model takes one of two inputs:
- `pixels`: UINT8 [N, 3, S, S] at the model's crop size, already preprocessed: straight to the batcher;
- `image`: BYTES [N, 1] (or [N]) of encoded images, preprocessed by the server as /classify does.
It has two outputs, `logits` and `probabilities` (FP32 [N, num_classes]); a requested output with the
parameter `classification: k` becomes BYTES [N, k] of "score:index:label", highest score first.
Models exported with them also offer, when asked by name (a request that names no output gets only
the two above): `features` (FP32 [N, C]), `cam` (FP32 [N, k, h, w], the class activation maps of the
top k classes, parameter `k`, default 1; or of one class, parameter `class_id`) and `cam_classes`
(INT64 [N, k], which classes those maps are of).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from service.api.observe import Observation
from service.api.v2.tensors import BYTES, TensorData, datatype_of
from service.core.call import AdmittedCall
from service.core.client import EngineClient
from service.core.outcomes import InferOutcome, top_k_predictions
from service.core.target import Target
from service.errors import InvalidArgument, ServiceError, UnknownModel
from service.lifecycle.records import ModelEntry
from service.runtime.outputs import EXTRA_OUTPUTS, NOTHING, Wanted
from service.runtime.priorities import parse_priority
from service.schemas import Timings

PIXELS = "pixels"
IMAGE = "image"
OUTPUT_NAMES = ("logits", "probabilities")
KNOWN_OUTPUTS = (*OUTPUT_NAMES, *EXTRA_OUTPUTS)
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "effnet-serve"
EXTENSIONS = (
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "system_shared_memory",
)


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


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
    # Response parameters: `route` (JSON text) for auto and cascades; `cached` (true) when every input
    # was answered from the response cache.
    parameters: dict[str, str | bool] = field(default_factory=dict)


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
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise UnknownModel(f"model '{name[:64]}' has no version '{version[:32]}'; versions are numbers >= 1")
    return int(version)


def admit(
    observation: Observation, name: str, version: str = "", deadline: float | None = None
) -> AdmittedCall:
    """What serves an inference request to `name` (and `version`), from the URL or message alone; the
    options in its body refine the call later (`infer`)."""
    return observation.admit(parse_version(name, version), deadline=deadline)


def model_ready(engine: EngineClient, name: str, version: str = "") -> bool:
    """Whether `name` (at `version`) is ready; raises UnknownModel for a name the server does not know."""
    engine.lookup(name)
    try:
        engine.ready_version(name, parse_version(name, version))
    except ServiceError:  # loading, failed, unloaded, shutting down, or another version
        return False
    return True


async def load(engine: EngineClient, name: str, parameters: Mapping[str, Any]) -> None:
    """The repository extension's load: parameters (config overrides, files) are not taken."""
    if parameters:
        unsupported = ", ".join(sorted(parameters))[:200]
        raise InvalidArgument(
            f"load parameters are not supported ({unsupported}): models load from the repository"
        )
    await engine.load_model(name)


async def unload(engine: EngineClient, name: str, parameters: Mapping[str, Any]) -> None:
    """The repository extension's unload, with Triton's `unload_dependents` (the cascades using it)."""
    dependents = parameters.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise InvalidArgument("parameter 'unload_dependents' must be true or false")
    await engine.unload_model(name, dependents)


def metadata_of(engine: EngineClient, name: str, version: str = "") -> ModelMetadata:
    entry = engine.ready_version(name, parse_version(name, version))
    ready = [str(e.version) for e in engine.lookup(entry.name).ready_versions()]
    return model_metadata(entry, ready)


def model_metadata(entry: ModelEntry, versions: Sequence[str] = ()) -> ModelMetadata:
    """V2 metadata of `entry`; `versions`: every ready version of the model (default: entry's own)."""
    assert entry.spec is not None
    versions = versions or (str(entry.version),)
    if entry.kind == "cascade":  # stages of several resolutions: encoded images only
        image_only = (TensorMetadata(IMAGE, BYTES, (-1, 1)),)
        outputs = tuple(
            TensorMetadata(o.name, _spec_datatype(o.dtype), tuple(o.shape))
            for o in entry.spec.outputs
            if o.name in KNOWN_OUTPUTS
        )
        return ModelMetadata(entry.name, tuple(versions), "ensemble", image_only, outputs)
    spec = entry.spec
    pixels = TensorMetadata(PIXELS, "UINT8", (-1, 3, spec.crop_size, spec.crop_size))
    image = TensorMetadata(IMAGE, BYTES, (-1, 1))
    outputs = tuple(
        TensorMetadata(o.name, _spec_datatype(o.dtype), tuple(o.shape))
        for o in spec.outputs
        if o.name in KNOWN_OUTPUTS
    )
    inputs = tuple(t for t in (pixels, image) if t.name in offered_inputs(entry))
    return ModelMetadata(entry.name, tuple(versions), PLATFORM, inputs, outputs)


def offered_inputs(entry: ModelEntry) -> tuple[str, ...]:
    """The V2 inputs a model takes: its config.json's `v2_inputs` (both by default)."""
    return entry.config.v2_inputs if entry.config is not None else (PIXELS, IMAGE)


def _spec_datatype(dtype: str) -> str:
    return {"uint8": "UINT8", "float32": "FP32", "float16": "FP16", "int64": "INT64"}[dtype]


# ------------------------------------------------------------------------------------------ inference
def deadline_from(parameters: Mapping[str, Any]) -> float | None:
    """The deadline of Triton's request parameter `timeout` (microseconds); the call keeps the earlier
    of it and the transport's."""
    timeout_us = parameters.get("timeout")
    if isinstance(timeout_us, int) and not isinstance(timeout_us, bool) and timeout_us > 0:
        return time.monotonic() + timeout_us / 1e6
    return None


async def infer(engine: EngineClient, call: AdmittedCall, request: InferRequest) -> InferResponse:
    """Run `request` on the admitted `call`: its options are checked against the target here, once the
    body is known (`AdmittedCall.refine`), then its one input goes to the engine."""
    requested = _check_outputs(call.target, request.outputs)
    wanted = _wanted(requested)
    top_k = max((r.classification for r in requested), default=0) or None
    budget = request.parameters.get("budget_ms")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
        raise InvalidArgument("parameter 'budget_ms' must be a number of milliseconds")
    # `priority`: a level's name, or Triton's integer (0 default, 1 highest): service/runtime/priorities.py
    priority = request.parameters.get("priority")
    level = parse_priority(priority) if priority is not None else None
    target = call.refine(
        top_k=top_k, budget_ms=budget, priority=level, deadline=deadline_from(request.parameters)
    ).target
    if len(request.inputs) != 1:
        raise InvalidArgument(
            f"expected exactly one input, '{PIXELS}' (UINT8 [N, 3, S, S]) or '{IMAGE}' (BYTES [N]); "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    record = target.record if target.kind == "model" else None
    if record is not None and tensor.name in (PIXELS, IMAGE) and tensor.name not in record.config.v2_inputs:
        raise InvalidArgument(
            f"model '{target.name}' takes only {', '.join(record.config.v2_inputs)} (its config.json's "
            f"v2_inputs), not '{tensor.name[:64]}'"
        )
    if tensor.name == PIXELS:
        if tensor.datatype != "UINT8" or isinstance(tensor.data, list):
            raise InvalidArgument(f"input '{PIXELS}' must be UINT8, got {tensor.datatype[:32]}")
        outcome = await engine.infer_pixels(call, tensor.data, wanted)
    elif tensor.name == IMAGE:
        if tensor.datatype != BYTES or not isinstance(tensor.data, list):
            raise InvalidArgument(f"input '{IMAGE}' must be BYTES, got {tensor.datatype[:32]}")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidArgument(f"input '{IMAGE}' must have shape [N] or [N, 1], got {list(tensor.shape)}")
        outcome = await engine.infer_images(call, tensor.data, wanted)
    else:
        raise InvalidArgument(
            f"unknown input '{tensor.name[:64]}'; model '{target.name}' takes '{PIXELS}' or '{IMAGE}'"
        )
    ran = outcome.model  # a new version may have taken over since admission: answer with the one that ran
    outputs = [_build_output(outcome, ran, r) for r in requested]
    parameters: dict[str, str | bool] = {}
    if outcome.route:
        parameters["route"] = outcome.route.model_dump_json(exclude_none=True)
    if outcome.all_cached:
        parameters["cached"] = True
    return InferResponse(ran.name, str(ran.version), request.id, outputs, outcome.timings, parameters)


def _check_outputs(target: Target, outputs: list[RequestedOutput]) -> list[RequestedOutput]:
    if not outputs:
        return [RequestedOutput(name) for name in OUTPUT_NAMES]
    seen: set[str] = set()
    # One model: what its version offers (an older export lacks the extra outputs). auto and cascades:
    # the model that answers is checked when it is known (core/explain.py names it).
    offered = target.spec.output_names if target.kind == "model" and target.spec else KNOWN_OUTPUTS
    for output in outputs:
        if output.name not in offered:
            raise InvalidArgument(
                f"unknown output '{output.name[:64]}'; model '{target.name}' has {', '.join(offered)}"
            )
        if output.classification and output.name not in OUTPUT_NAMES:
            raise InvalidArgument(
                f"output '{output.name}': parameter 'classification' is for logits/probabilities"
            )
        if output.name in seen:
            raise InvalidArgument(f"output '{output.name}' is requested twice")
        seen.add(output.name)
    return outputs


def _count(requested: RequestedOutput, key: str) -> int | None:
    value = requested.parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"output '{requested.name}': parameter '{key}' must be a whole number >= 0")
    return value


def _wanted(requested: list[RequestedOutput]) -> Wanted:
    """The extra outputs asked for; maps: parameter `class_id` (one class) or `k` (the top k, default 1)."""
    extras = [r for r in requested if r.name in EXTRA_OUTPUTS]
    if not extras:
        return NOTHING
    class_ids: tuple[int, ...] = ()
    for r in extras:
        class_id, k = _count(r, "class_id"), _count(r, "k")
        if class_id is not None:
            class_ids = (class_id,)
        elif k:
            class_ids = (-1,) * k
    return Wanted.of(
        [r.name for r in extras], class_ids or (-1,) if any(r.name != "features" for r in extras) else ()
    )


def _build_output(outcome: InferOutcome, entry: ModelEntry, requested: RequestedOutput) -> OutputTensor:
    values = outcome.outputs[requested.name]
    if values.dtype == object:  # a cascade's stages answered with different grids or feature sizes
        raise InvalidArgument(
            f"the images were answered by models whose '{requested.name}' differ in shape; "
            "send them in separate requests"
        )
    k = requested.classification
    if not k:
        return OutputTensor(requested.name, datatype_of(values), tuple(values.shape), values, requested)
    # Rank by this output's own values, as Triton does (logits and probabilities give the same order).
    rows = [top_k_predictions(row, entry.labels, k) for row in values]
    k = len(rows[0]) if rows else k
    items = [f"{p.score:f}:{p.class_id}:{p.label}".encode() for row in rows for p in row]
    return OutputTensor(requested.name, BYTES, (len(rows), k), items, requested)
