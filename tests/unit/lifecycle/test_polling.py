"""Poll mode as operators publish: `cp -r` of a version or of a whole model folder (its model.json still
naming the original), copies still in progress, broken versions logged once per change."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from service.core.engine import Engine
from tests.engine_calls import classify
from tests.tiny_model import png, write_model
from tests.unit.conftest import EngineStarter
from tests.waiting import until

POLL_S = 0.05


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path, "alpha")
    return tmp_path


async def started(repository: Path, start_engine: EngineStarter) -> Engine:
    return await start_engine(repository, model_control="poll", poll_interval_s=POLL_S)


def failures(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and "model_failed" in r.getMessage()
        and f"model={model} " in r.getMessage()
    ]


async def test_cp_r_of_a_version_serves_it(
    repository: Path, start_engine: EngineStarter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await started(repository, start_engine)
    shutil.copytree(repository / "alpha" / "1", repository / "alpha" / "2")  # model.json says alpha/1
    record = engine.lookup("alpha")
    await until(lambda: getattr(record.serving(), "version", None) == 2, what="alpha/2 serving")
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 2
    (shown,) = [v for v in engine.describe(record).versions if v.version == 2]
    assert shown.recorded_as == "alpha/1" and shown.ready
    assert not failures(caplog, "alpha")


async def test_cp_r_of_a_model_folder_under_a_new_name_serves_it(
    repository: Path, start_engine: EngineStarter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await started(repository, start_engine)
    shutil.copytree(repository / "alpha", repository / "alpha-copy")
    await until(lambda: engine.admission.canonical("alpha-copy") is not None, what="alpha-copy found")
    copy = engine.lookup("alpha-copy")
    await until(lambda: copy.serving() is not None, what="alpha-copy serving")
    outcome = await classify(engine, "alpha-copy", [png((5, 250, 5))], 1)
    assert outcome.model.name == "alpha-copy" and outcome.predictions[0][0].label == "green"
    assert engine.describe(copy).versions[0].recorded_as == "alpha/1"
    assert {m.name for m in engine.model_list().models} == {"alpha", "alpha-copy"}
    assert not failures(caplog, "alpha-copy")


async def test_a_version_still_being_copied_is_left_alone(
    repository: Path, start_engine: EngineStarter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await started(repository, start_engine)
    source = repository / "alpha" / "1"
    target = repository / "alpha" / "2"
    target.mkdir()
    for name in ("model.json", "labels.txt"):
        shutil.copy(source / name, target / name)
    graph = (source / "model.onnx").read_bytes()
    step = max(1, len(graph) // 20)
    with (target / "model.onnx").open("wb") as handle:  # a slow copy: a piece every half poll
        for start in range(0, len(graph), step):
            handle.write(graph[start : start + step])
            handle.flush()
            await asyncio.sleep(POLL_S / 2)
    record = engine.lookup("alpha")
    await until(lambda: getattr(record.serving(), "version", None) == 2, what="alpha/2 serving")
    assert not failures(caplog, "alpha"), "a copy in progress must not be tried (and fail)"


async def test_a_broken_version_is_logged_once_per_change(
    repository: Path, start_engine: EngineStarter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await started(repository, start_engine)
    broken = repository / "alpha" / "2"
    shutil.copytree(repository / "alpha" / "1", broken)
    (broken / "model.onnx").write_bytes(b"not the graph model.json describes")
    record = engine.lookup("alpha")
    await until(lambda: len(failures(caplog, "alpha")) == 1, what="the failure logged")
    poller = engine.poller
    assert poller is not None
    seen = poller.scans
    await until(lambda: poller.scans >= seen + 10, what="ten more scans of the same broken files")
    assert len(failures(caplog, "alpha")) == 1, failures(caplog, "alpha")
    assert getattr(record.serving(), "version", None) == 1  # the old version serves on
    shutil.copy(repository / "alpha" / "1" / "model.onnx", broken / "model.onnx")  # fixed: tried again
    await until(lambda: getattr(record.serving(), "version", None) == 2, what="the fixed version serving")
