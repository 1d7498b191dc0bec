"""The Runner contract the batcher calls: run, run_items and busy. OrtRunner keeps it whole; a runner
that only runs stacked batches is given the rest (rows stacked, no extra outputs, never busy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime.runner import Stacking, as_runner
from service.runtime.session import OrtRunner
from tests.tiny_model import SIZE, ort_options, write_model


class Batches:
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.shapes.append(batch.shape)
        return {"scores": batch.reshape(len(batch), -1).sum(axis=1, dtype=np.float32)}


def test_the_ort_runner_keeps_the_whole_contract(tmp_path: Path) -> None:
    runner = OrtRunner(write_model(tmp_path, "tiny") / "model.onnx", ort_options("cpu"), ["probabilities"])
    assert as_runner(runner) is runner
    with runner.busy() as alone:
        assert alone
        with runner.busy() as second:
            assert not second  # a batch starting while this core decodes is not alone
    rows = [np.zeros((3, SIZE, SIZE), np.uint8)] * 3
    assert runner.run_items(rows)["probabilities"].shape == (3, 4)


def test_a_runner_of_stacked_batches_gets_rows_stacked_and_refuses_extra_outputs() -> None:
    inner = Batches()
    runner = as_runner(inner)
    assert isinstance(runner, Stacking)
    out = runner.run_items([np.ones((2, 2), np.uint8), np.full((2, 2), 2, np.uint8)])
    assert inner.shapes == [(2, 2, 2)] and out["scores"].tolist() == [4.0, 8.0]
    with runner.busy() as alone:
        assert alone
    with pytest.raises(ValueError, match="cannot compute"):
        runner.run_items([np.ones((2, 2), np.uint8)], extra=["features"])
