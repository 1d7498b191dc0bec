"""Triton's model configuration extension: a model's `ModelConfig`, derived from its model.json (tensors,
crop size, preprocessing) and config.json (version policy, batching, instances, response cache) and from
what the loaded version really got (max batch size, instances, provider).

One builder makes the JSON document in Triton's shape (HTTP answers it as is); gRPC parses the same
document into `inference.ModelConfig`, so the two can never disagree. Field names are Triton's; numbers
stay JSON numbers (perf_analyzer reads `dims` and `max_batch_size` as numbers, not as the strings a
generic protobuf-to-JSON writer makes of int64).

- A model: platform `onnxruntime_onnx`; inputs `pixels` (UINT8 [3, S, S]) and `image` (BYTES, one
  encoded image per batch row), both `optional` since a request sends exactly one of them (or the one
  its config.json's `v2_inputs` names, then required).
- A cascade: platform `ensemble`, its stages as `ensemble_scheduling` steps in the order they run and
  their exit confidences as parameters; it takes `image` only.
- `auto`: platform `auto` (no Triton platform fits: each request runs on one model it chooses); its
  candidates and default latency budget as parameters; it takes `image` only.
"""

from __future__ import annotations

from typing import Any

from service.api.v2 import dataplane as v2
from service.core.client import EngineClient
from service.core.routing import auto_candidates
from service.core.target import AUTO
from service.errors import InvalidArgument, NotReady
from service.lifecycle.configs import VersionPolicy
from service.lifecycle.records import ModelEntry, ModelRecord
from service.runtime.priorities import DEFAULT, LEVELS
from service.runtime.providers import CUDA

ENSEMBLE = "ensemble"
LABELS_FILE = "labels.txt"
_TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
}


def model_config(engine: EngineClient, name: str, version: str = "") -> dict[str, Any]:
    """The ModelConfig of `name` (at `version`: the newest ready one when empty), in Triton's JSON."""
    if engine.canonical(name) == AUTO:
        if version:
            raise InvalidArgument(f"'{AUTO}' has no versions; leave the version out")
        return _auto_config(engine)
    entry = engine.ready_version(name, v2.parse_version(name, version))
    record = engine.lookup(entry.name)
    if record.cascade is not None:
        return _cascade_config(engine, record, entry)
    return _single_model_config(record, entry, engine.settings.cuda_device_id)


def version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific)}}
    return {"latest": {"num_versions": policy.latest}}


def _single_model_config(record: ModelRecord, entry: ModelEntry, gpu: int) -> dict[str, Any]:
    spec, batcher = entry.spec, entry.batcher
    assert spec is not None and batcher is not None
    batching = batcher.config
    kind = "KIND_GPU" if entry.provider == CUDA else "KIND_CPU"
    group: dict[str, Any] = {"name": f"{entry.name}_0", "kind": kind, "count": batching.instances}
    if kind == "KIND_GPU":
        group["gpus"] = [gpu]
    inputs = _inputs(entry, v2.offered_inputs(entry))
    config = _common(entry, "onnxruntime_onnx", record, batching.max_batch_size, inputs)
    config.update(
        backend="onnxruntime",
        dynamic_batching={
            # The batcher runs whatever is queued when a runner frees, up to a full batch: the full batch
            # is the one size it waits for (and only max_queue_delay long).
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.max_queue_delay_s * 1e6),
            # Triton's levels count from 1 (highest); ours are high, normal, low.
            "priority_levels": len(LEVELS),
            "default_priority_level": int(DEFAULT) + 1,
        },
        instance_group=[group],
    )
    config["parameters"].update(
        _parameters(
            variant=spec.variant,
            architecture=spec.architecture,
            precision=spec.precision,
            crop_size=spec.crop_size,
            resize_size=spec.resize_size,
            interpolation=spec.interpolation,
            mean=",".join(f"{v:g}" for v in spec.normalization.mean),
            std=",".join(f"{v:g}" for v in spec.normalization.std),
            num_classes=spec.num_classes,
            max_queue_size=batching.max_queue_size,
            provider=entry.provider or "",
        )
    )
    return config


def _cascade_config(engine: EngineClient, record: ModelRecord, entry: ModelEntry) -> dict[str, Any]:
    assert record.cascade is not None
    stages = record.cascade.stages
    sizes = []
    for stage in stages:
        serving = engine.model_records()[stage.model].serving()
        if serving is not None and serving.batcher is not None:
            sizes.append(serving.batcher.config.max_batch_size)
    max_batch = min(sizes, default=engine.settings.max_images_per_request)
    config = _common(entry, ENSEMBLE, record, max_batch, _inputs(entry, (v2.IMAGE,)))
    config["ensemble_scheduling"] = {
        "step": [
            {
                "model_name": stage.model,
                "model_version": -1,
                "input_map": {v2.IMAGE: v2.IMAGE},
                "output_map": {name: name for name in v2.OUTPUT_NAMES},
            }
            for stage in stages
        ]
    }
    config["parameters"].update(
        _parameters(
            kind="cascade",
            stages=",".join(stage.model for stage in stages),
            **{
                f"exit_confidence.{stage.model}": f"{stage.exit_confidence:g}"
                for stage in stages
                if stage.exit_confidence is not None
            },
        )
    )
    return config


def _auto_config(engine: EngineClient) -> dict[str, Any]:
    candidates = auto_candidates(engine.model_records().values())
    if not candidates:
        raise NotReady(f"'{AUTO}' has no ready model to choose from")
    sizes = [e.batcher.config.max_batch_size for _, e in candidates if e.batcher is not None]
    _, first = candidates[0]
    config: dict[str, Any] = {
        "name": AUTO,
        "platform": AUTO,
        "max_batch_size": min(sizes, default=engine.settings.max_images_per_request),
        "input": _inputs(first, (v2.IMAGE,)),
        "output": _outputs(first),
        "parameters": _parameters(
            kind=AUTO,
            candidates=",".join(record.name for record, _ in candidates),
            budget_ms=f"{engine.settings.auto_budget_ms:g}",
        ),
    }
    return config


def _common(
    entry: ModelEntry, platform: str, record: ModelRecord, max_batch: int, inputs: list[dict[str, Any]]
) -> dict[str, Any]:
    cached = record.config.response_cache
    return {
        "name": entry.name,
        "platform": platform,
        "version_policy": version_policy(record.config.version_policy),
        "max_batch_size": max_batch,
        "input": inputs,
        "output": _outputs(entry),
        "response_cache": {"enable": cached},
        "parameters": {},
    }


def _inputs(entry: ModelEntry, offered: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `offered` inputs; optional when there are two (a request sends one of them)."""
    assert entry.spec is not None
    size = entry.spec.crop_size
    optional = len(offered) > 1
    pixels = {
        "name": v2.PIXELS,
        "data_type": "TYPE_UINT8",
        "format": "FORMAT_NCHW",
        "dims": [3, size, size],
        "optional": optional,
    }
    image = {  # one encoded image per batch row
        "name": v2.IMAGE,
        "data_type": "TYPE_STRING",
        "format": "FORMAT_NONE",
        "dims": [1],
        "optional": optional,
    }
    return [tensor for tensor in (pixels, image) if tensor["name"] in offered]


def _outputs(entry: ModelEntry) -> list[dict[str, Any]]:
    assert entry.spec is not None
    outputs = []
    for tensor in entry.spec.outputs:
        if tensor.name not in v2.KNOWN_OUTPUTS:
            continue
        output: dict[str, Any] = {
            "name": tensor.name,
            "data_type": _TRITON_TYPES[tensor.dtype],
            "dims": list(tensor.shape[1:]),  # without the batch axis
        }
        if tensor.name in v2.OUTPUT_NAMES:
            output["label_filename"] = LABELS_FILE
        outputs.append(output)
    return outputs


def _parameters(**values: object) -> dict[str, dict[str, str]]:
    return {key: {"string_value": str(value)} for key, value in values.items()}
