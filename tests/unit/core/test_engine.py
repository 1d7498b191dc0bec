"""The engine with a tiny real ONNX graph (no torch): loading, readiness, errors, classify."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from service.core.engine import Engine
from service.core.outcomes import top_k_predictions
from service.errors import BadRequest, InvalidArgument, NotReady, Overloaded, UnknownModel
from service.metrics import Metrics
from tests.engine_calls import classify, infer_pixels
from tests.tiny_model import CLASSES, SIZE, png, tiny_settings, write_model
from tests.unit.conftest import EngineStarter
from tests.waiting import until


async def test_classify_picks_the_dominant_colour(tiny_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(tiny_repository)
    outcome = await classify(engine, "tiny", [png((250, 5, 5)), png((5, 5, 250))], top_k=2)
    assert [p[0].label for p in outcome.predictions] == ["red", "blue"]
    assert all(len(p) == 2 for p in outcome.predictions)
    assert outcome.timings.total_ms >= outcome.timings.inference_ms >= 0


async def test_default_model_prefers_real_weights(tiny_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(tiny_repository)
    assert engine.default_model == "tiny"  # "noise" sorts first but has random weights
    outcome = await classify(engine, None, [png((5, 250, 5))], top_k=1)
    assert outcome.model.name == "tiny" and outcome.predictions[0][0].label == "green"


async def test_errors_for_unknown_model_top_k_and_count(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository, max_images_per_request=2)
    with pytest.raises(UnknownModel, match="valid models: noise, tiny"):
        await classify(engine, "b9", [png((1, 2, 3))], top_k=1)
    with pytest.raises(InvalidArgument, match="between 1 and 4"):
        await classify(engine, "tiny", [png((1, 2, 3))], top_k=5)
    with pytest.raises(InvalidArgument, match="at most 2"):
        await classify(engine, "tiny", [png((1, 2, 3))] * 3, top_k=1)
    with pytest.raises(InvalidArgument, match=r"shape \[N, 3, 16, 16\]"):
        await infer_pixels(engine, "tiny", np.zeros((1, 3, 8, 8), np.uint8))


async def test_infer_pixels_matches_infer_images(tiny_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(tiny_repository)
    pixels = np.zeros((2, 3, SIZE, SIZE), np.uint8)
    pixels[0, 0] = 200
    pixels[1, 2] = 200
    outcome = await infer_pixels(engine, "tiny", pixels)
    assert outcome.outputs["probabilities"].shape == (2, CLASSES)
    assert outcome.outputs["probabilities"].argmax(axis=1).tolist() == [0, 2]


async def test_corrupt_model_is_reported_and_the_others_serve(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    (tiny_repository / "noise" / "1" / "model.onnx").write_bytes(b"\x08\x01garbage")
    engine = await start_engine(tiny_repository)
    assert not engine.ready
    assert "sha256" in engine.readiness()["noise"]
    with pytest.raises(NotReady, match="noise"):
        await classify(engine, "noise", [png((1, 2, 3))], top_k=1)
    assert (await classify(engine, "tiny", [png((250, 0, 0))], top_k=1)).predictions[0][0].label == "red"


async def test_strict_mode_fails_start_on_a_broken_model(tiny_repository: Path) -> None:
    (tiny_repository / "noise" / "1" / "model.json").write_text("{}")
    engine = Engine(tiny_settings(tiny_repository, strict=True), Metrics(process_metrics=False))
    await engine.start()
    with pytest.raises(Exception, match="strict mode"):
        await engine.wait_loaded()
    await engine.stop()


async def test_missing_configured_model_is_not_ready(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository, models="tiny,b3")
    assert not engine.ready
    assert "not found" in engine.readiness()["b3"]
    assert engine.readiness()["tiny"] == "ready"


async def test_overload_rejects_before_decoding(tiny_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(tiny_repository, max_pending_preprocess=2, preprocess_in_batch=False)
    with pytest.raises(Overloaded, match="waiting to be decoded"):
        await classify(engine, "tiny", [png((1, 2, 3))] * 3, top_k=1)


async def test_overload_rejects_before_decoding_in_the_batch_threads(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository, max_queue_size=2, max_batch_size=1, instances=1)
    with pytest.raises(Overloaded, match="queue is full"):
        await classify(engine, "tiny", [png((1, 2, 3))] * 3, top_k=1)


@pytest.mark.parametrize("in_batch", [True, False])
async def test_a_bad_image_among_several_is_named_by_its_place(
    tiny_repository: Path, start_engine: EngineStarter, in_batch: bool
) -> None:
    engine = await start_engine(tiny_repository, preprocess_in_batch=in_batch)
    entry = engine.lifecycle.records["tiny"].serving()
    assert entry is not None and entry.backend is not None and entry.backend.in_batch is in_batch
    with pytest.raises(BadRequest, match="^image 1: "):
        await classify(engine, "tiny", [png((1, 2, 3)), b"\x89PNG\r\n\x1a\nbroken", png((4, 5, 6))], top_k=1)
    assert len((await classify(engine, "tiny", [png((1, 2, 3)), png((4, 5, 6))], top_k=1)).predictions) == 2


@pytest.mark.parametrize("in_batch", [True, False])
async def test_a_bad_image_after_a_cached_one_is_named_by_its_place_in_the_request(
    tmp_path: Path, start_engine: EngineStarter, in_batch: bool
) -> None:
    write_model(tmp_path, "tiny")
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({"response_cache": True}))
    engine = await start_engine(tmp_path, preprocess_in_batch=in_batch)
    await classify(engine, "tiny", [png((1, 2, 3))], top_k=1)  # now cached: only images 1 and 2 decode
    with pytest.raises(BadRequest, match="^image 2: "):
        await classify(engine, "tiny", [png((1, 2, 3)), png((4, 5, 6)), b"\x89PNG\r\n\x1a\nbroken"], top_k=1)


async def test_after_stop_requests_are_refused(tiny_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(tiny_repository)
    await engine.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await classify(engine, "tiny", [png((1, 2, 3))], top_k=1)


async def test_concurrent_requests_each_get_their_own_answer(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    colours = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
    names = list(colours) * 20
    outcomes = await asyncio.gather(
        *(classify(engine, "tiny", [png(colours[name])], top_k=1) for name in names)
    )
    assert [o.predictions[0][0].label for o in outcomes] == names


def test_top_k_orders_by_score_then_class_id() -> None:
    probabilities = np.array([0.1, 0.4, 0.1, 0.4], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    top = top_k_predictions(probabilities, labels, 3)
    assert [(p.class_id, p.label) for p in top] == [(1, "b"), (3, "d"), (0, "a")]
    assert top_k_predictions(probabilities, labels, 1)[0].score == pytest.approx(0.4)


async def test_stop_gives_up_on_a_stuck_batch_after_the_drain_timeout(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository, drain_timeout_s=0.2, max_batch_size=1, instances=1)
    batcher = engine.ready_version("tiny").batcher
    inner, release = batcher.runner, threading.Event()

    entered = threading.Event()

    class StuckRunner:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            entered.set()
            release.wait(30)
            return inner.run(batch)

    batcher.runner = StuckRunner()
    running = asyncio.create_task(classify(engine, "tiny", [png((250, 0, 0))], top_k=1))
    await until(entered.is_set, what="the first batch running")
    queued = asyncio.create_task(classify(engine, "tiny", [png((0, 250, 0))], top_k=1))
    await until(lambda: batcher.queue_depth == 1, what="the second request queued")
    await asyncio.wait_for(engine.stop(), timeout=15)  # bounded: drain timeout + abort grace
    with pytest.raises(NotReady):
        await queued
    release.set()
    assert (await running).predictions[0][0].label == "red"
