"""`auto` under a latency budget and confidence cascades, with tiny real ONNX models."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InvalidArgument, NotReady
from service.preprocess.formats import DecodeLimits
from tests.engine_calls import classify
from tests.tiny_model import SIZE, png, write_model
from tests.unit.conftest import EngineStarter

CONFIDENT = (250, 5, 5)  # red: the tiny model is sure (p ~ 1)
UNSURE = (100, 100, 0)  # red, green and grey tie: top probability ~ 1/3


@pytest.fixture
def family(tmp_path: Path) -> Path:
    # "big" is more accurate but, by its size, predicted at 1 + 25 * 4 = 101 ms before it has run here.
    write_model(tmp_path, "small", accuracy=70.0, gmacs=0.1)
    write_model(tmp_path, "big", accuracy=80.0, gmacs=4.0)
    write_model(tmp_path, "unrated")  # no declared accuracy: never chosen by auto
    (tmp_path / "cascade-tiny").mkdir()
    cascade = {"stages": [{"model": "small", "exit_confidence": 0.5}, {"model": "big"}]}
    (tmp_path / "cascade-tiny" / "cascade.json").write_text(json.dumps(cascade))
    return tmp_path


async def test_auto_picks_the_most_accurate_model_that_fits(
    family: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(family)
    tight = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=50)
    assert tight.model.name == "small" and tight.route is not None
    assert tight.route.policy == "auto" and tight.route.fits and tight.route.budget_ms == 50
    assert tight.route.predicted_ms is not None and tight.route.predicted_ms <= 50
    roomy = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)
    assert roomy.model.name == "big" and roomy.route is not None and roomy.route.model == "big"
    default = await classify(engine, "auto", [png(CONFIDENT)], 1)  # settings.auto_budget_ms = 100
    assert default.route is not None and default.route.budget_ms == 100
    chosen = engine.metrics.route_choices.labels("auto", "small", "true")._value.get()
    assert chosen >= 1


async def test_auto_never_answers_with_a_model_of_another_label_set(
    family: Path, start_engine: EngineStarter
) -> None:
    # The most accurate model of all, but of other classes: two models share the colour labels, so
    # auto keeps to them and never answers a colour question with "cat".
    write_model(family, "pets", accuracy=99.0, labels=("cat", "dog", "fish", "bird"))
    engine = await start_engine(family)
    outcome = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=10_000)
    assert outcome.model.name == "big" and outcome.predictions[0][0].label == "red"


async def test_auto_takes_the_fastest_when_nothing_fits_and_says_so(
    family: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(family)
    outcome = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=0.5)
    assert outcome.model.name == "small"
    assert outcome.route is not None and outcome.route.fits is False


async def test_auto_refuses_pixels_versions_and_budgets_elsewhere(
    family: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(family)
    with pytest.raises(InvalidArgument, match="has no versions"):
        await classify(engine, "auto", [png(CONFIDENT)], 1, version=1)
    with pytest.raises(InvalidArgument, match="budget_ms applies to 'auto'"):
        await classify(engine, "small", [png(CONFIDENT)], 1, budget_ms=10)


async def test_auto_without_declared_accuracies_is_not_ready(
    tmp_path: Path, start_engine: EngineStarter
) -> None:
    write_model(tmp_path, "unrated")
    engine = await start_engine(tmp_path)
    with pytest.raises(NotReady, match="declares its ImageNet accuracy"):
        await classify(engine, "auto", [png(CONFIDENT)], 1)


async def test_cascade_escalates_only_the_unsure_images(family: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(family)
    outcome = await classify(engine, "cascade-tiny", [png(CONFIDENT), png(UNSURE)], 2)
    assert outcome.model.name == "cascade-tiny"
    route = outcome.route
    assert route is not None and route.policy == "cascade" and route.images is not None
    first, second = route.images
    assert first.answered_by == "small" and [s.model for s in first.stages] == ["small"]
    assert first.stages[0].confidence > 0.9 and not first.stages[0].escalated
    assert second.answered_by == "big" and [s.model for s in second.stages] == ["small", "big"]
    assert second.stages[0].escalated and second.stages[0].confidence < 0.5
    assert outcome.predictions[0][0].label == "red"
    metrics = engine.metrics
    assert metrics.cascade_images.labels("cascade-tiny", "small")._value.get() == 2
    assert metrics.cascade_escalations.labels("cascade-tiny", "small")._value.get() == 1
    assert metrics.cascade_images.labels("cascade-tiny", "big")._value.get() == 1
    listing = {m.name: m for m in engine.model_list().models}
    assert listing["cascade-tiny"].kind == "cascade" and listing["cascade-tiny"].ready
    assert [s.model for s in listing["cascade-tiny"].stages] == ["small", "big"]
    assert "auto" in engine.model_list().policies


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        (
            {"stages": [{"model": "small", "exit_confidence": 0.5}, {"model": "nope"}]},
            "'nope' is not a model",
        ),
        ({"stages": [{"model": "small", "exit_confidence": 0.5}, {"model": "other"}]}, "another label set"),
        ({"stages": [{"model": "small"}, {"model": "big"}]}, "needs an exit_confidence"),
        ({"stages": [{"model": "small", "exit_confidence": 0.5}]}, "at least 2"),
    ],
)
async def test_a_bad_cascade_fails_alone_with_the_reason(
    family: Path, cascade: dict[str, object], message: str, start_engine: EngineStarter
) -> None:
    write_model(family, "other", labels=("cat", "dog", "cow", "owl"))
    (family / "cascade-tiny" / "cascade.json").write_text(json.dumps(cascade))
    engine = await start_engine(family)
    assert message in engine.readiness()["cascade-tiny"]
    with pytest.raises(NotReady, match=message.replace("(", r"\(")):
        await classify(engine, "cascade-tiny", [png(CONFIDENT)], 1)
    assert (await classify(engine, "small", [png(CONFIDENT)], 1)).model.name == "small"


async def test_auto_remembers_the_load_at_which_a_model_was_too_slow(
    family: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(family)
    router = engine.router
    for _ in range(24):  # big's recent answers took a second: far over 60 % of the budget
        engine.live.observe_latency("big", 1.0)
    first = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)
    assert first.model.name == "small"
    engine.live._recent["big"].clear()  # its queue drained: the prediction alone would fit again
    again = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)
    assert again.model.name == "small", "not at the load it was too slow at"
    rate, _ = router._overloaded_at["big"]
    router._overloaded_at["big"] = (rate, time.monotonic() - 3600)  # long ago: the limit has risen
    later = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)
    assert later.model.name == "big"


async def test_a_stall_of_a_few_requests_is_not_remembered(family: Path, start_engine: EngineStarter) -> None:
    """A handful of slow answers (a stall, a cold start) steer auto away only while they are recent;
    they are not a load the model cannot carry, so big is not kept out once they age."""
    engine = await start_engine(family)
    for _ in range(6):
        engine.live.observe_latency("big", 1.0)
    stalled = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)
    assert stalled.model.name == "small" and "big" not in engine.router._overloaded_at
    engine.live._recent["big"].clear()  # two seconds later: aged out of the window
    assert (await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=500)).model.name == "big"


async def test_auto_at_a_steady_rate_with_a_generous_budget_picks_the_most_accurate(
    family: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(family)
    chosen: list[str] = []

    async def client() -> None:
        for _ in range(60):
            outcome = await classify(engine, "auto", [png(CONFIDENT)], 1, budget_ms=1000)
            chosen.append(outcome.model.name)

    await asyncio.gather(*(client() for _ in range(4)))
    share = chosen.count("big") / len(chosen)
    assert share >= 0.95, f"big chosen for {share:.0%} of {len(chosen)}"


async def test_admission_leaves_the_router_alone(family: Path, start_engine: EngineStarter) -> None:
    """Only a request that is routed moves auto's memory; admitting (and refusing) does not."""
    engine = await start_engine(family)
    for _ in range(24):
        engine.live.observe_latency("big", 1.0)  # measured far over any budget here
    for _ in range(5):
        call = engine.admit("Auto", top_k=2, budget_ms=500)
        target = call.target
        assert target.kind == "auto" and target.name == "auto" and target.budget_ms == 500
    with pytest.raises(InvalidArgument, match="top_k"):
        engine.admit("auto", top_k=99)
    assert engine.router._overloaded_at == {} and not engine.router._arrivals
    await engine.classify(call, [png(CONFIDENT)])
    assert "big" in engine.router._overloaded_at and len(engine.router._arrivals) == 1


async def test_cascade_in_any_case_and_pixels_refused(family: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(family)
    call = engine.admit("CASCADE-Tiny")
    assert (call.target.kind, call.label) == ("cascade", "cascade-tiny")
    with pytest.raises(InvalidArgument, match="send encoded images"):
        await engine.infer_pixels(call, np.zeros((1, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(InvalidArgument, match="has no versions"):
        engine.admit("cascade-tiny", 1)


async def test_a_cascade_runs_each_stage_through_its_own_backend(
    family: Path, start_engine: EngineStarter
) -> None:
    """With the resize graph chosen (the GPU path's backend, here on the CPU provider), every stage
    preprocesses with its own version's backend, and is observed like any request."""
    engine = await start_engine(family, resize="graph")
    calls: dict[str, int] = {}
    for name in ("small", "big"):
        entry = engine.ready_version(name)
        backend = entry.backend
        assert backend is not None and backend.name == "pillow+graph(cpu)"
        prepare = backend.prepare

        def counted(data: bytes, limits: DecodeLimits, name: str = name, prepare: Any = prepare) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return prepare(data, limits)

        backend.prepare = counted  # type: ignore[method-assign]
    outcome = await classify(engine, "cascade-tiny", [png(CONFIDENT), png(UNSURE), png(UNSURE)], 1)
    assert outcome.route is not None and [i.answered_by for i in outcome.route.images or []] == [
        "small",
        "big",
        "big",
    ]
    assert calls == {"small": 3, "big": 2}
    observed = engine.metrics.preprocess_duration.labels("big")
    assert observed._sum.get() > 0  # the stage's preprocessing is in the metrics
    assert len(engine.live._recent["big"]) == 1 and len(engine.live._recent["small"]) == 1
