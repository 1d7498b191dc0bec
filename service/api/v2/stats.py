"""Triton's statistics extension: the counts of service/statistics.py in Triton's `ModelStatistics`
shape (one document; HTTP answers it, gRPC parses it into the message).

Counts are kept per model name, as the Prometheus series are: `version` is the version asked for
(when it is ready) or the one serving now, and the counts are the model's across its versions.
Without a name, every model the repository holds is listed, ready or not.
"""

from __future__ import annotations

from typing import Any

from service.api.v2 import dataplane as v2
from service.core.client import EngineClient
from service.lifecycle.records import ModelRecord
from service.statistics import Duration, ModelCounts, Statistics


def model_statistics(
    engine: EngineClient, statistics: Statistics, name: str = "", version: str = ""
) -> dict[str, Any]:
    if not name:
        if version:
            v2.parse_version(name, version)
        rows = [_row(record, "", statistics) for record in engine.model_records().values()]
        return {"model_stats": rows}
    entry = engine.ready_version(name, v2.parse_version(name, version)) if version else None
    record = engine.lookup(name)
    shown = str(entry.version) if entry is not None else ""
    return {"model_stats": [_row(record, shown, statistics)]}


def _row(record: ModelRecord, version: str, statistics: Statistics) -> dict[str, Any]:
    if not version:
        serving = record.serving()
        version = str(serving.version) if serving is not None and serving.version is not None else ""
    counts = statistics.of(record.name)
    return {
        "name": record.name,
        "version": version,
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": {key: _duration(getattr(counts, key)) for key in ModelCounts.INFERENCE_FIELDS},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(durations.compute_input),
                "compute_infer": _duration(durations.compute_infer),
                "compute_output": _duration(durations.compute_output),
            }
            for size, durations in sorted(counts.batches.items())
        ],
    }


def _duration(duration: Duration) -> dict[str, int]:
    return duration.as_dict()
