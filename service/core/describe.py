"""A model's public description (`/v1/models`, gRPC ListModels) from its lifecycle record."""

from __future__ import annotations

from service.lifecycle.records import ModelEntry, ModelRecord, ModelState
from service.schemas import BatcherInfo, ModelInfo, StageInfo, VersionInfo


def _shown_version(record: ModelRecord) -> ModelEntry | None:
    """The serving version, else the newest one the version policy would serve, else the newest."""
    serving = record.serving()
    if serving is not None:
        return serving
    targets = record.config.version_policy.select(list(record.versions))
    if targets:
        return record.versions[targets[-1]]
    return record.newest()


def describe_model(record: ModelRecord, default: bool = False) -> ModelInfo:
    entry = _shown_version(record)
    if entry is None:
        return ModelInfo(
            name=record.name,
            kind=record.kind,
            version=None,
            state=ModelState.FAILED.value,
            ready=False,
            reason=record.reason,
            default=default,
        )
    reason = record.reason or entry.reason
    info = ModelInfo(
        name=record.name,
        kind=record.kind,
        stages=[
            StageInfo(model=stage.model, exit_confidence=stage.exit_confidence)
            for stage in (record.cascade.stages if record.cascade is not None else ())
        ],
        description=record.cascade.description if record.cascade is not None else None,
        version=entry.version,
        state=entry.state.value,
        ready=entry.ready,
        reason=None if entry.ready else reason,
        default=default,
        provider=entry.provider,
        versions=[_version_info(record.versions[n]) for n in sorted(record.versions)],
    )
    spec = entry.spec
    if spec is not None:
        info = info.model_copy(
            update=dict(
                variant=spec.variant,
                architecture=spec.architecture,
                resolution=spec.crop_size,
                resize_size=spec.resize_size,
                interpolation=spec.interpolation,
                normalization=spec.normalization,
                num_classes=spec.num_classes,
                parameters=spec.parameters,
                gmacs=spec.gmacs,
                weights=spec.weights,
                inputs=list(spec.inputs),
                outputs=list(spec.outputs),
                opset=spec.opset,
                precision=spec.precision,
                accuracy=spec.accuracy,
                # A cascade's spec is its last stage's: that stage's measurement is not the cascade's.
                measured=spec.measured if record.kind != "cascade" else None,
                agreement=spec.agreement,
            )
        )
    batcher = entry.batcher
    if batcher is not None:
        info.batcher = BatcherInfo(
            max_batch_size=batcher.config.max_batch_size,
            instances=batcher.config.instances,
            overlap_run_size=getattr(batcher.runner, "overlap_run_size", None),
            max_queue_delay_ms=batcher.config.max_queue_delay_s * 1000,
            max_queue_size=batcher.config.max_queue_size,
            queue_depth=batcher.queue_depth,
        )
    return info


def _version_info(entry: ModelEntry) -> VersionInfo:
    assert entry.version is not None
    return VersionInfo(
        version=entry.version,
        state=entry.state.value,
        ready=entry.ready,
        reason=entry.reason,
        memory_bytes=entry.memory_bytes,
        load_seconds=None if entry.load_seconds is None else round(entry.load_seconds, 3),
        loaded_at=entry.loaded_at,
        last_used=entry.last_used,
        in_flight=entry.in_flight,
        recorded_as=entry.recorded_as,
    )
