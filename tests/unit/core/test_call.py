"""`AdmittedCall`: one admission carries the target, the label, the id, the deadline and the options a
body adds later (refine), checked by the same admission (a real engine on the tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidArgument, UnknownModel
from service.runtime.priorities import parse_priority
from tests.tiny_model import png
from tests.unit.conftest import EngineStarter


async def test_the_call_carries_target_label_id_and_deadline(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    call = engine.admit("TINY", top_k=2, request_id="abc", deadline=123.0, priority=parse_priority("high"))
    assert (call.label, call.name, call.request_id, call.deadline) == ("tiny", "tiny", "abc", 123.0)
    assert call.target.top_k == 2 and call.priority == parse_priority("high")


async def test_refine_checks_the_options_against_the_admitted_target(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    call = engine.admit("tiny", deadline=50.0)
    call.refine(top_k=3, priority=parse_priority("low"), deadline=80.0)
    assert call.target.top_k == 3 and call.priority == parse_priority("low")
    assert call.deadline == 50.0  # a body's deadline only ever shortens the transport's
    call.refine(deadline=10.0)
    assert call.deadline == 10.0 and call.priority == parse_priority("low")  # None keeps the priority
    with pytest.raises(InvalidArgument, match="top_k"):
        call.refine(top_k=999)
    with pytest.raises(InvalidArgument, match="budget_ms"):
        call.refine(budget_ms=10)


async def test_the_engine_runs_the_call_with_its_deadline(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    outcome = await engine.classify(engine.admit("tiny", top_k=1), [png((250, 5, 5))])
    assert outcome.model.name == "tiny" and len(outcome.predictions[0]) == 1
    expired = engine.admit("tiny", deadline=0.0001)  # long past on the monotonic clock
    with pytest.raises(Exception, match="deadline"):
        await engine.classify(expired, [png((250, 5, 5))])
    with pytest.raises(UnknownModel):
        engine.admit("nope")
