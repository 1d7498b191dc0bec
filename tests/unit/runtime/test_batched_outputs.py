"""Extra outputs share batches: one run computes the union of what its items ask, each item gets its
own share (runtime/outputs.py), on a real ONNX Runtime session of the tiny graph with the explain
outputs (models/heads.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from service.errors import BadImage
from service.runtime.batcher import Batcher, BatcherConfig, Encoded
from service.runtime.outputs import NOTHING, Wanted, plan
from service.runtime.session import OrtRunner
from tests.tiny_model import SIZE, TINY_WEIGHTS, ort_options, write_model


def _runner(tmp_path: Path) -> OrtRunner:
    folder = write_model(tmp_path, "tiny", explain=True)
    return OrtRunner(folder / "model.onnx", ort_options(), ["logits", "probabilities"])


def _solid(colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8)[:, None, None], (3, SIZE, SIZE)).copy()


def test_plan_pads_rows_that_want_fewer_maps() -> None:
    run = plan([NOTHING, Wanted.of(["cam"], (2,)), Wanted.of(["features"]), Wanted.of(["cam"], (-1, -1, -1))])
    assert run.extra == ("cam", "cam_classes", "features")
    assert run.cam_class_ids is not None
    assert run.cam_class_ids.tolist() == [[-1, -1, -1], [2, -1, -1], [-1, -1, -1], [-1, -1, -1]]
    assert plan([NOTHING, NOTHING]).extra == () and plan([NOTHING]).feeds == {}


async def test_mixed_asks_run_in_one_batch(tmp_path: Path) -> None:
    batcher = Batcher("tiny", _runner(tmp_path), BatcherConfig(max_batch_size=4))
    red, green, blue = _solid((250, 5, 5)), _solid((5, 250, 5)), _solid((5, 5, 250))
    batcher.start()
    # All three submit in one turn of the event loop, before the batch loop wakes: one batch.
    calls = [
        batcher.submit([red]),
        batcher.submit([green], wanted=Wanted.of(["features"])),
        batcher.submit([blue, red], wanted=Wanted.of(["cam"], (-1, 3))),
    ]
    tasks = [asyncio.ensure_future(call) for call in calls]
    plain, embedded, mapped = await asyncio.gather(*tasks)
    await batcher.close()
    assert batcher.batches_run == 1 and plain[0].batch_size == 4

    assert set(plain[0].outputs) == {"logits", "probabilities"}
    assert set(embedded[0].outputs) == {"logits", "probabilities", "features"}
    np.testing.assert_allclose(embedded[0].outputs["features"], [5, 250, 5], atol=1e-4)
    for item, colour, best in zip(mapped, ((5, 5, 250), (250, 5, 5)), (2, 0), strict=True):
        assert item.outputs["cam_classes"].tolist() == [best, 3]
        expected = TINY_WEIGHTS[:, [best, 3]].T @ np.array(colour, np.float32)
        assert item.outputs["cam"].shape == (2, SIZE, SIZE)
        np.testing.assert_allclose(item.outputs["cam"].mean(axis=(1, 2)), expected, rtol=1e-5)


async def test_maps_of_a_batch_where_one_image_failed_to_decode(tmp_path: Path) -> None:
    """The failed image has no row in the run: the maps' class ids must not have one either."""

    def decoded(data: bytes) -> np.ndarray:
        if data == b"broken":
            raise BadImage("cannot decode image")
        return _solid((250, 5, 5))

    batcher = Batcher("tiny", _runner(tmp_path), BatcherConfig(max_batch_size=4))
    batcher.start()
    wanted = Wanted.of(["cam"], (-1,))
    calls = [
        batcher.submit([Encoded(b"broken", decoded)], wanted=wanted),
        batcher.submit([Encoded(b"red", decoded)], wanted=wanted),
    ]
    broken, red = await asyncio.gather(
        *(asyncio.ensure_future(call) for call in calls), return_exceptions=True
    )
    await batcher.close()
    assert batcher.batches_run == 1 and batcher.batches_failed == 0
    assert isinstance(broken, BadImage)
    assert not isinstance(red, BaseException)
    assert red[0].outputs["cam_classes"].tolist() == [0] and red[0].outputs["cam"].shape == (1, SIZE, SIZE)
