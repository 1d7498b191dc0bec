"""ONNX Runtime sessions: provider choice, warm-up sizes, run()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime import (
    CPU,
    OrtRunner,
    RuntimeOptions,
    RuntimeUnavailable,
    _providers,
    nvidia_gpu_present,
    warmup_batch_sizes,
)
from tests.tiny_model import SIZE, write_model


def options(device: str) -> RuntimeOptions:
    return RuntimeOptions(
        device=device,
        intra_op_threads=1,
        inter_op_threads=1,
        allow_spinning=False,
        graph_optimization="all",
        cuda_device_id=0,
        cudnn_conv_algo_search="HEURISTIC",
    )


def test_cpu_is_asked_for_cpu_only() -> None:
    assert _providers(options("cpu")) == [CPU]


@pytest.mark.skipif(nvidia_gpu_present(), reason="this machine has a GPU")
def test_auto_without_a_gpu_uses_cpu_and_cuda_fails_loudly(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    assert _providers(options("auto")) == [CPU]
    runner = OrtRunner(folder / "model.onnx", options("auto"), ["logits", "probabilities"])
    assert runner.provider == CPU
    with pytest.raises(RuntimeUnavailable, match="cuda"):
        OrtRunner(folder / "model.onnx", options("cuda"), ["logits", "probabilities"])


def test_run_returns_named_outputs_per_row(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", options("cpu"), ["logits", "probabilities"])
    batch = np.zeros((3, 3, SIZE, SIZE), np.uint8)
    outputs = runner.run(batch)
    assert outputs["logits"].shape == (3, 4) and outputs["probabilities"].shape == (3, 4)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert runner.warm_up((3, SIZE, SIZE), [1, 2], runs=1) >= 0


def test_warmup_covers_powers_of_two_up_to_the_batch_size() -> None:
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(4) == [1, 2, 4]
    assert warmup_batch_sizes(6) == [1, 2, 4, 6]
    assert warmup_batch_sizes(32) == [1, 2, 4, 8, 16, 32]
