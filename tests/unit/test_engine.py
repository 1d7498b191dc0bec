"""The engine with a tiny real ONNX graph (no torch): loading, readiness, errors, classify."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.engine import Engine, top_k_predictions
from service.errors import InvalidArgument, NotReady, Overloaded, UnknownModel
from service.metrics import Metrics
from service.settings import Settings
from tests.tiny_model import CLASSES, SIZE, write_model


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path, "tiny")
    write_model(tmp_path, "noise", weights_kind="random")
    return tmp_path


async def started(settings: Settings) -> Engine:
    engine = Engine(settings, Metrics(process_metrics=False))
    await engine.start()
    await engine.wait_loaded()
    return engine


def settings_for(repository: Path, **overrides: object) -> Settings:
    return Settings(repository=repository, warmup_runs=1, intra_op_threads=1, **overrides)


async def test_classify_picks_the_dominant_colour(repository: Path) -> None:
    engine = await started(settings_for(repository))
    try:
        outcome = await engine.classify("tiny", [png((250, 5, 5)), png((5, 5, 250))], top_k=2)
        assert [p[0].label for p in outcome.predictions] == ["red", "blue"]
        assert all(len(p) == 2 for p in outcome.predictions)
        assert outcome.timings.total_ms >= outcome.timings.inference_ms >= 0
    finally:
        await engine.stop()


async def test_default_model_prefers_real_weights(repository: Path) -> None:
    engine = await started(settings_for(repository))
    try:
        assert engine.default_model == "tiny"  # "noise" sorts first but has random weights
        outcome = await engine.classify(None, [png((5, 250, 5))], top_k=1)
        assert outcome.model.name == "tiny" and outcome.predictions[0][0].label == "green"
    finally:
        await engine.stop()


async def test_errors_for_unknown_model_top_k_and_count(repository: Path) -> None:
    engine = await started(settings_for(repository, max_images_per_request=2))
    try:
        with pytest.raises(UnknownModel, match="valid models: noise, tiny"):
            await engine.classify("b9", [png((1, 2, 3))], top_k=1)
        with pytest.raises(InvalidArgument, match="between 1 and 4"):
            await engine.classify("tiny", [png((1, 2, 3))], top_k=5)
        with pytest.raises(InvalidArgument, match="at most 2"):
            await engine.classify("tiny", [png((1, 2, 3))] * 3, top_k=1)
        with pytest.raises(InvalidArgument, match=r"shape \[N, 3, 16, 16\]"):
            await engine.infer_pixels("tiny", np.zeros((1, 3, 8, 8), np.uint8))
    finally:
        await engine.stop()


async def test_infer_pixels_matches_infer_images(repository: Path) -> None:
    engine = await started(settings_for(repository))
    try:
        pixels = np.zeros((2, 3, SIZE, SIZE), np.uint8)
        pixels[0, 0] = 200
        pixels[1, 2] = 200
        outcome = await engine.infer_pixels("tiny", pixels)
        assert outcome.outputs["probabilities"].shape == (2, CLASSES)
        assert outcome.outputs["probabilities"].argmax(axis=1).tolist() == [0, 2]
    finally:
        await engine.stop()


async def test_corrupt_model_is_reported_and_the_others_serve(repository: Path) -> None:
    (repository / "noise" / "1" / "model.onnx").write_bytes(b"\x08\x01garbage")
    engine = await started(settings_for(repository))
    try:
        assert not engine.ready
        assert "sha256" in engine.readiness()["noise"]
        with pytest.raises(NotReady, match="noise"):
            await engine.classify("noise", [png((1, 2, 3))], top_k=1)
        assert (await engine.classify("tiny", [png((250, 0, 0))], top_k=1)).predictions[0][0].label == "red"
    finally:
        await engine.stop()


async def test_strict_mode_fails_start_on_a_broken_model(repository: Path) -> None:
    (repository / "noise" / "1" / "model.json").write_text("{}")
    engine = Engine(settings_for(repository, strict=True), Metrics(process_metrics=False))
    await engine.start()
    with pytest.raises(Exception, match="strict mode"):
        await engine.wait_loaded()
    await engine.stop()


async def test_missing_configured_model_is_not_ready(repository: Path) -> None:
    engine = await started(settings_for(repository, models="tiny,b3"))
    try:
        assert not engine.ready
        assert "not found" in engine.readiness()["b3"]
        assert engine.readiness()["tiny"] == "ready"
    finally:
        await engine.stop()


async def test_overload_rejects_before_decoding(repository: Path) -> None:
    engine = await started(settings_for(repository, max_pending_preprocess=2))
    try:
        with pytest.raises(Overloaded):
            await engine.classify("tiny", [png((1, 2, 3))] * 3, top_k=1)
    finally:
        await engine.stop()


async def test_after_stop_requests_are_refused(repository: Path) -> None:
    engine = await started(settings_for(repository))
    await engine.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await engine.classify("tiny", [png((1, 2, 3))], top_k=1)


async def test_concurrent_requests_each_get_their_own_answer(repository: Path) -> None:
    engine = await started(settings_for(repository))
    colours = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
    try:
        names = list(colours) * 20
        outcomes = await asyncio.gather(
            *(engine.classify("tiny", [png(colours[name])], top_k=1) for name in names)
        )
        assert [o.predictions[0][0].label for o in outcomes] == names
    finally:
        await engine.stop()


def test_top_k_orders_by_score_then_class_id() -> None:
    probabilities = np.array([0.1, 0.4, 0.1, 0.4], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    top = top_k_predictions(probabilities, labels, 3)
    assert [(p.class_id, p.label) for p in top] == [(1, "b"), (3, "d"), (0, "a")]
    assert top_k_predictions(probabilities, labels, 1)[0].score == pytest.approx(0.4)


async def test_stop_gives_up_on_a_stuck_batch_after_the_drain_timeout(repository: Path) -> None:
    engine = await started(settings_for(repository, drain_timeout_s=0.2, max_batch_size=1))
    batcher = engine.resolve("tiny").batcher
    inner, release = batcher.runner, threading.Event()

    class StuckRunner:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            release.wait(30)
            return inner.run(batch)

    batcher.runner = StuckRunner()
    running = asyncio.create_task(engine.classify("tiny", [png((250, 0, 0))], top_k=1))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(engine.classify("tiny", [png((0, 250, 0))], top_k=1))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(engine.stop(), timeout=15)  # bounded: drain timeout + abort grace
    with pytest.raises(NotReady):
        await queued
    release.set()
    assert (await running).predictions[0][0].label == "red"
