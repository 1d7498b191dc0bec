"""The engine on the GPU path's pieces, run on the CPU provider: precision choice, the resize graph
backend, batch buckets and IO binding, all through `classify` with a tiny real ONNX graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_calls import classify
from tests.tiny_model import png, write_model
from tests.unit.conftest import EngineStarter


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path, "tiny")
    write_model(tmp_path, "tiny-fp16")  # the same graph under an fp16 variant's name
    return tmp_path


@pytest.mark.parametrize(("precision", "ran"), [("auto", "tiny"), ("fp32", "tiny"), ("fp16", "tiny-fp16")])
async def test_the_answer_names_the_graph_that_ran(
    repository: Path, precision: str, ran: str, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, precision=precision)
    outcome = await classify(engine, "tiny", [png((250, 5, 5))], top_k=1)
    assert outcome.model.name == ran  # auto on CPU: fp32
    explicit = await classify(engine, "tiny-fp16", [png((250, 5, 5))], top_k=1)
    assert explicit.model.name == "tiny-fp16"


async def test_graph_resize_with_buckets_and_io_binding_classifies_like_pillow(
    repository: Path, start_engine: EngineStarter
) -> None:
    colours = [(250, 5, 5), (5, 250, 5), (5, 5, 250)]
    images = [png(c, size) for c, size in zip(colours, [(40, 30), (30, 50), (64, 64)], strict=True)]
    engine = await start_engine(
        repository, resize="graph", batch_buckets="on", io_binding="on", max_batch_size=4, models="tiny"
    )
    entry = engine.ready_version("tiny")
    assert entry.backend is not None and entry.backend.name == "pillow+graph(cpu)"
    runner = entry.runner
    assert runner is not None
    assert runner.use_buckets and runner.use_io_binding and runner.buckets == [1, 2, 4]
    outcome = await classify(engine, "tiny", images, top_k=1)
    assert [p[0].label for p in outcome.predictions] == ["red", "green", "blue"]
