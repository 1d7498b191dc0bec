"""Which top-1 `auto` ranks by: measured figures when every candidate was measured on one photo set,
else the declared ImageNet figures (a measured one only for a model that declares none); and model.json
stays readable by schema-2 servers unless it carries a measured accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from service.core.routing import ranking_accuracy
from service.model_spec import MeasuredAccuracy, ModelSpec
from tests.tiny_model import write_model


def _spec(tmp_path: Path, name: str, declared: float | None, measured: tuple[str, float] | None) -> ModelSpec:
    spec = ModelSpec.from_file(write_model(tmp_path, name, accuracy=declared) / "model.json")
    if measured is not None:
        spec = spec.with_measured(MeasuredAccuracy(dataset=measured[0], images=10, top1=measured[1]))
    return spec


def test_measured_on_one_set_wins_over_declared(tmp_path: Path) -> None:
    specs = [_spec(tmp_path, "a", 90.0, ("shop", 60.0)), _spec(tmp_path, "b", 50.0, ("shop", 80.0))]
    assert ranking_accuracy(specs) == ([60.0, 80.0], "measured on shop")


def test_mixed_or_partly_measured_sets_fall_back_to_declared(tmp_path: Path) -> None:
    specs = [_spec(tmp_path, "a", 90.0, ("shop", 60.0)), _spec(tmp_path, "b", 50.0, ("street", 80.0))]
    assert ranking_accuracy(specs) == ([90.0, 50.0], "declared")
    specs = [_spec(tmp_path, "c", 90.0, None), _spec(tmp_path, "d", None, ("shop", 80.0))]
    assert ranking_accuracy(specs) == ([90.0, 80.0], "declared")


def test_schema_3_only_when_measured(tmp_path: Path) -> None:
    plain = _spec(tmp_path, "e", 70.0, None)
    written = json.loads(plain.to_json())
    assert written["schema_version"] == 2 and "measured" not in written
    measured = _spec(tmp_path, "f", 70.0, ("shop", 75.0))
    again = ModelSpec.model_validate_json(measured.to_json())
    assert again.schema_version == 3 and again.measured is not None and again.measured.top1 == 75.0
