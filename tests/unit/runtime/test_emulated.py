"""The emulated device: the measured curve interpolated and scaled, time spent asleep (no CPU), the
tiny graph's own output shapes, and selection only by an explicit setting."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.runtime.emulated import EMULATED, BatchCurve, EmulatedRunner, Emulation, parse_emulation
from service.runtime.runner import as_runner
from service.runtime.session import OrtRunner
from tests.tiny_model import SIZE, ort_options, write_model

CURVE = BatchCurve("test", (1, 8, 256), (1.0, 2.0, 30.0))


def test_the_curve_is_interpolated_between_and_extended_beyond_its_points() -> None:
    assert CURVE.seconds(1) == pytest.approx(0.001)
    assert CURVE.seconds(8) == pytest.approx(0.002)
    assert CURVE.seconds(4) == pytest.approx((1.0 + 3 / 7) / 1000)
    assert CURVE.seconds(512) == pytest.approx(0.060)  # per image beyond the largest batch


def test_bad_curves_are_refused() -> None:
    with pytest.raises(ValueError):
        BatchCurve("x", (8, 1), (1.0, 2.0))
    with pytest.raises(ValueError):
        BatchCurve("x", (1,), (0.0,))


def test_the_measured_gpu_curves_parse_with_a_scale() -> None:
    emulation = parse_emulation("b0-fp16:2.5")
    assert emulation.scale == 2.5 and emulation.curve.sizes[0] == 1 and emulation.curve.sizes[-1] == 256
    assert 18 < emulation.curve.ms[-1] < 20  # 19.0 ms at batch 256 (bench/results/gpu/gpu.json)
    assert parse_emulation("b0").scale == 1.0
    with pytest.raises(ValueError, match="measured"):
        parse_emulation("b9")
    with pytest.raises(ValueError, match="scale"):
        parse_emulation("b0:fast")
    with pytest.raises(ValueError, match="positive"):
        parse_emulation("b0:0")


def test_a_curve_file_of_the_same_shape(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"batches": {"2": {"ms_per_batch": 4.0}, "1": {"ms_per_batch": 3.0}}}))
    emulation = parse_emulation(f"{path}:0.5")
    assert emulation.curve.sizes == (1, 2) and emulation.scale == 0.5


@pytest.fixture
def runner(tmp_path: Path) -> EmulatedRunner:
    folder = write_model(tmp_path, "tiny")
    inner = OrtRunner(folder / "model.onnx", ort_options(), ["logits", "probabilities"])
    return EmulatedRunner(inner, Emulation(CURVE, 20.0), (3, SIZE, SIZE))


def test_runs_answer_the_graphs_shapes_after_the_curves_time_without_cpu(runner: EmulatedRunner) -> None:
    batch = np.zeros((8, 3, SIZE, SIZE), np.uint8)
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = runner.run(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 0.040  # 2 ms at batch 8, times 20
    assert cpu < wall / 4  # asleep, not computing
    assert outputs["probabilities"].shape == (8, 4) and outputs["logits"].dtype == np.float32
    assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    again = runner.run(batch)
    assert again["logits"] is not outputs["logits"]  # callers keep views: never reused
    assert runner.provider.startswith(EMULATED) and runner.runs == 2


def test_batches_run_one_at_a_time_as_on_one_device(runner: EmulatedRunner) -> None:
    batch = np.zeros((1, 3, SIZE, SIZE), np.uint8)  # 1 ms x 20 each
    threads = [threading.Thread(target=runner.run, args=(batch,)) for _ in range(3)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - start >= 0.058


def test_runners_sharing_a_lock_file_take_turns_as_servers_on_one_gpu(tmp_path: Path) -> None:
    """Two servers' devices (here two runners with their own open files, as in two processes) share one
    emulated GPU through the lock file; without it they would overlap."""
    inner = OrtRunner(write_model(tmp_path, "tiny") / "model.onnx", ort_options(), ["probabilities"])
    lock = str(tmp_path / "gpu.lock")
    shared = [EmulatedRunner(inner, Emulation(CURVE, 20.0), (3, SIZE, SIZE), lock) for _ in range(2)]
    apart = [EmulatedRunner(inner, Emulation(CURVE, 20.0), (3, SIZE, SIZE)) for _ in range(2)]
    batch = np.zeros((1, 3, SIZE, SIZE), np.uint8)  # 20 ms each

    def both(runners: list[EmulatedRunner]) -> float:
        threads = [threading.Thread(target=r.run, args=(batch,)) for r in runners for _ in range(2)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start

    assert both(shared) >= 0.078  # four batches one after another
    assert both(apart) < 0.070  # two devices: two at a time


def test_it_keeps_the_runner_contract_so_extra_outputs_are_computed(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "seen", explain=True)
    inner = OrtRunner(folder / "model.onnx", ort_options(), ["logits", "probabilities"])
    runner = EmulatedRunner(inner, Emulation(CURVE, 1.0), (3, SIZE, SIZE))
    assert as_runner(runner) is runner
    rows = [np.full((3, SIZE, SIZE), 200, np.uint8), np.zeros((3, SIZE, SIZE), np.uint8)]
    outputs = runner.run_items(rows, ["features"])
    assert outputs["features"].shape == (2, 3) and not np.allclose(
        outputs["features"][0], outputs["features"][1]
    )
