"""The memory budget's estimate before a model's first load."""

from __future__ import annotations

from pathlib import Path

from service.lifecycle.budget import MemoryBudget
from service.lifecycle.records import ModelEntry, ModelRecord
from service.model_spec import ModelSpec
from tests.tiny_model import write_model


def _entry(tmp_path: Path, gmacs: float) -> tuple[ModelRecord, ModelEntry]:
    folder = write_model(tmp_path, "m", gmacs=gmacs, padding_bytes=10 << 20)
    entry = ModelEntry("m", 1, folder, spec=ModelSpec.from_file(folder / "model.json"))
    return ModelRecord("m", folder.parent), entry


def test_instances_beyond_three_add_memory_by_gmacs(tmp_path: Path) -> None:
    record, entry = _entry(tmp_path, gmacs=1.8)  # b3's size
    at_three = MemoryBudget.estimate(record, entry, instances=3)
    assert MemoryBudget.estimate(record, entry, instances=1) == at_three  # measured at 3 or fewer
    extra = MemoryBudget.estimate(record, entry, instances=17) - at_three
    assert 14 * 36 << 20 < extra < 14 * 48 << 20  # b3 measured 37 MB per instance


def test_a_measured_load_replaces_the_estimate(tmp_path: Path) -> None:
    record, entry = _entry(tmp_path, gmacs=0.4)
    record.measured_bytes = 123 << 20
    assert MemoryBudget.estimate(record, entry, instances=17) == 123 << 20


def test_a_lazy_load_expects_the_instances_it_will_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from service.lifecycle.configs import ModelConfig
    from service.lifecycle.manager import Lifecycle
    from service.settings import Settings

    _, entry = _entry(tmp_path, gmacs=1.8)
    expected = Lifecycle._expected_instances
    sixteen = SimpleNamespace(settings=Settings(device="cpu", cpus=16))
    assert expected(sixteen, ModelConfig(), entry) == 16  # type: ignore[arg-type]  # b1-b3: one per core
    assert expected(sixteen, ModelConfig(instances=2), entry) == 2  # type: ignore[arg-type]
    cuda = SimpleNamespace(settings=Settings(device="cuda", cpus=16))
    assert expected(cuda, ModelConfig(), entry) == 2  # type: ignore[arg-type]
