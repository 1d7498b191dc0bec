"""The response cache on real engines (tiny ONNX models, real sessions): a hit equals the miss it
replays and skips preprocessing and inference; versions, config.json and unknown output options never
share an answer; the in-process store stays within its bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from service.core.cache.keys import keys_for, model_identity, output_options
from service.core.cache.memory import MemoryBackend
from service.core.cache.rows import decode_rows, encode_rows
from service.core.engine import Engine
from service.core.target import Target
from service.runtime.priorities import Priority
from tests.engine_calls import classify
from tests.tiny_model import png, write_model
from tests.unit.conftest import EngineStarter
from tests.waiting import until


def cached_repository(folder: Path, cache: bool = True) -> Path:
    write_model(folder, "tiny")
    (folder / "tiny" / "config.json").write_text(json.dumps({"response_cache": cache}))
    return folder


def batches(engine: Engine, name: str = "tiny") -> int:
    entry = engine.lifecycle.records[name].serving()
    assert entry is not None and entry.batcher is not None
    return entry.batcher.batches_run


def test_rows_round_trip_and_refuse_garbage() -> None:
    rows = {"logits": np.arange(4, dtype=np.float32), "probabilities": np.full(4, 0.25, np.float32)}
    decoded = decode_rows(encode_rows(rows))
    assert decoded.keys() == rows.keys()
    for name, array in rows.items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].dtype == array.dtype
    for garbage in (b"", b"\x05\x00\x00\x00[[1]]", encode_rows(rows)[:-1]):
        with pytest.raises(ValueError, match="not a cached answer"):
            decode_rows(garbage)


async def test_memory_backend_evicts_least_recently_used_within_its_bytes() -> None:
    store = MemoryBackend(max_bytes=3 * (1000 + 1 + 200))
    await store.set_many([(k, bytes(1000)) for k in "abc"])
    assert len(store) == 3 and store.bytes <= store.max_bytes
    assert (await store.get_many(["a"]))[0] is not None  # a is now the most recently used
    await store.set_many([("d", bytes(1000))])
    found = await store.get_many(["a", "b", "c", "d"])
    assert [value is not None for value in found] == [True, False, True, True]
    assert await store.set_many([("huge", bytes(10_000))]) == 0  # larger than the whole cache
    assert store.bytes <= store.max_bytes


def test_output_options_known_unknown_and_ignored() -> None:
    plain = Target("m", "model", None, top_k=3, priority=Priority.LOW)
    assert output_options(plain) == ()  # top_k and priority do not change the stored rows

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFeatures(Target):  # what another feature may add to the target
        features: bool = False

    assert output_options(WithFeatures("m", "model", None)) == ()  # not asked for
    assert output_options(WithFeatures("m", "model", None, features=True)) is None  # unknown: no cache


async def test_hit_equals_miss_and_skips_decoding_and_inference(
    tmp_path: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(cached_repository(tmp_path))
    images = [png((250, 5, 5)), png((5, 5, 250))]
    first = await classify(engine, "tiny", images, top_k=4)
    ran = batches(engine)
    second = await classify(engine, "tiny", images, top_k=2)
    assert first.cached == (False, False) and second.cached == (True, True) and second.all_cached
    assert batches(engine) == ran
    assert second.timings.preprocess_ms == second.timings.inference_ms == 0
    # The stored rows are the whole output: any top_k is answered from them exactly.
    assert [p[:2] for p in first.predictions] == second.predictions
    # One new image among known ones: only it runs.
    third = await classify(engine, "tiny", [images[0], png((5, 250, 5))])
    assert third.cached == (True, False) and batches(engine) == ran + 1
    assert third.predictions[1][0].label == "green"
    text = engine.metrics.render().decode()
    assert 'effnet_cache_lookups_total{backend="memory",model="tiny",result="hit"} 3.0' in text
    assert 'effnet_cache_lookups_total{backend="memory",model="tiny",result="miss"} 3.0' in text


async def test_pixels_are_keyed_by_their_bytes(tmp_path: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(cached_repository(tmp_path))
    pixels = np.zeros((2, 3, 16, 16), np.uint8)
    pixels[1, 2] = 200
    first = await engine.infer_pixels(engine.admit("tiny"), pixels)
    second = await engine.infer_pixels(engine.admit("tiny"), pixels)
    assert second.cached == (True, True)
    np.testing.assert_array_equal(first.outputs["probabilities"], second.outputs["probabilities"])
    pixels[1, 2, 0, 0] = 201
    third = await engine.infer_pixels(engine.admit("tiny"), pixels)
    assert third.cached == (True, False)


async def test_models_without_the_opt_in_never_cache(tmp_path: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(cached_repository(tmp_path, cache=False))
    for _ in range(2):
        outcome = await classify(engine, "tiny", [png()])
        assert outcome.cached == ()
    assert batches(engine) == 2


async def test_a_new_version_or_config_never_answers_from_the_old_one(
    tmp_path: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(cached_repository(tmp_path), model_control="explicit", models="tiny")
    image = png((250, 5, 5))
    await classify(engine, "tiny", [image])
    assert (await classify(engine, "tiny", [image])).cached == (True,)
    old = engine.lifecycle.records["tiny"].serving()
    assert old is not None

    write_model(tmp_path, "tiny", version=2, labels=("rot", "grün", "blau", "grau"))
    await engine.load_model("tiny")
    swapped = await classify(engine, "tiny", [image])
    assert swapped.model.version == 2 and swapped.cached == (False,)
    assert swapped.predictions[0][0].label == "rot"
    assert (await classify(engine, "tiny", [image])).cached == (True,)

    # The same files under another config.json: another key.
    entry = engine.lifecycle.records["tiny"].serving()
    assert entry is not None and entry.config is not None
    other = dataclasses.replace(entry, config=entry.config.model_copy(update={"max_batch_size": 1}))
    assert model_identity(other, "image") != model_identity(entry, "image")
    assert model_identity(old, "image") != model_identity(entry, "image")
    assert keys_for(model_identity(entry, "image"), (), [image]) != keys_for(
        model_identity(entry, "pixels"), (), [image]
    )


async def test_a_full_queue_still_answers_hits(tmp_path: Path, start_engine: EngineStarter) -> None:
    """Hits need no queue slot: a cached image admitted before the queue filled is answered while the
    model's queue is full and its runner busy."""
    engine = await start_engine(cached_repository(tmp_path), max_queue_size=1, max_batch_size=1, instances=1)
    image = png((250, 5, 5))
    await classify(engine, "tiny", [image])
    target = engine.admit("tiny", top_k=1)
    entry = engine.lifecycle.records["tiny"].serving()
    assert entry is not None and entry.batcher is not None
    batcher = entry.batcher
    gate = threading.Event()
    original = batcher.runner

    class Held:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            gate.wait(10)
            return original.run(batch)

    batcher.runner = Held()  # type: ignore[assignment]
    try:
        busy = [asyncio.create_task(classify(engine, "tiny", [png((9, 9, 1))]))]
        await until(lambda: batcher.batches_run == 2, what="the runner holds a batch")
        busy.append(asyncio.create_task(classify(engine, "tiny", [png((9, 9, 2))])))
        await until(lambda: batcher.queue_depth == 1)
        assert not batcher.room(1, Priority.HIGH)
        hit = await engine.classify(target, [image])
        assert hit.cached == (True,) and hit.predictions[0][0].label == "red"
    finally:
        gate.set()
    await asyncio.gather(*busy)
    batcher.runner = original
