"""`auto` under a latency budget and confidence cascades, with tiny real ONNX models."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from service.core.engine import Engine
from service.errors import InvalidArgument, NotReady
from service.metrics import Metrics
from service.settings import Settings
from tests.tiny_model import write_model

CONFIDENT = (250, 5, 5)  # red: the tiny model is sure (p ~ 1)
UNSURE = (100, 100, 0)  # red, green and grey tie: top probability ~ 1/3


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def started(repository: Path, **overrides: object) -> Engine:
    values: dict[str, object] = dict(
        repository=repository, warmup_runs=1, intra_op_threads=1, hash_cache=None
    )
    values.update(overrides)
    engine = Engine(Settings(**values), Metrics(process_metrics=False))  # type: ignore[arg-type]
    await engine.start()
    await engine.wait_loaded()
    return engine


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


async def test_auto_picks_the_most_accurate_model_that_fits(family: Path) -> None:
    engine = await started(family)
    try:
        tight = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=50)
        assert tight.model.name == "small" and tight.route is not None
        assert tight.route.policy == "auto" and tight.route.fits and tight.route.budget_ms == 50
        assert tight.route.predicted_ms is not None and tight.route.predicted_ms <= 50
        roomy = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=500)
        assert roomy.model.name == "big" and roomy.route is not None and roomy.route.model == "big"
        default = await engine.classify("auto", [png(CONFIDENT)], 1)  # settings.auto_budget_ms = 100
        assert default.route is not None and default.route.budget_ms == 100
        chosen = engine.metrics.route_choices.labels("auto", "small", "true")._value.get()
        assert chosen >= 1
    finally:
        await engine.stop()


async def test_auto_takes_the_fastest_when_nothing_fits_and_says_so(family: Path) -> None:
    engine = await started(family)
    try:
        outcome = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=0.5)
        assert outcome.model.name == "small"
        assert outcome.route is not None and outcome.route.fits is False
    finally:
        await engine.stop()


async def test_auto_refuses_pixels_versions_and_budgets_elsewhere(family: Path) -> None:
    engine = await started(family)
    try:
        with pytest.raises(InvalidArgument, match="has no versions"):
            await engine.classify("auto", [png(CONFIDENT)], 1, version=1)
        with pytest.raises(InvalidArgument, match="budget_ms applies to 'auto'"):
            await engine.classify("small", [png(CONFIDENT)], 1, budget_ms=10)
    finally:
        await engine.stop()


async def test_auto_without_declared_accuracies_is_not_ready(tmp_path: Path) -> None:
    write_model(tmp_path, "unrated")
    engine = await started(tmp_path)
    try:
        with pytest.raises(NotReady, match="declares its ImageNet accuracy"):
            await engine.classify("auto", [png(CONFIDENT)], 1)
    finally:
        await engine.stop()


async def test_cascade_escalates_only_the_unsure_images(family: Path) -> None:
    engine = await started(family)
    try:
        outcome = await engine.classify("cascade-tiny", [png(CONFIDENT), png(UNSURE)], 2)
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
    finally:
        await engine.stop()


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
    family: Path, cascade: dict[str, object], message: str
) -> None:
    write_model(family, "other", labels=("cat", "dog", "cow", "owl"))
    (family / "cascade-tiny" / "cascade.json").write_text(json.dumps(cascade))
    engine = await started(family)
    try:
        assert message in engine.readiness()["cascade-tiny"]
        with pytest.raises(NotReady, match=message.replace("(", r"\(")):
            await engine.classify("cascade-tiny", [png(CONFIDENT)], 1)
        assert (await engine.classify("small", [png(CONFIDENT)], 1)).model.name == "small"
    finally:
        await engine.stop()


async def test_auto_remembers_the_load_at_which_a_model_was_too_slow(family: Path) -> None:
    engine = await started(family)
    try:
        router = engine.router
        for _ in range(6):  # big's recent answers took a second: far over 60 % of the budget
            router.observe_latency("big", 1.0)
        first = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=500)
        assert first.model.name == "small"
        router._recent["big"].clear()  # its queue drained: the prediction alone would fit again
        again = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=500)
        assert again.model.name == "small", "not at the load it was too slow at"
        rate, _ = router._overloaded_at["big"]
        router._overloaded_at["big"] = (rate, time.monotonic() - 3600)  # long ago: the limit has risen
        later = await engine.classify("auto", [png(CONFIDENT)], 1, budget_ms=500)
        assert later.model.name == "big"
    finally:
        await engine.stop()
