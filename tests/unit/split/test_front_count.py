"""`front_processes`: auto is one process on the CPU, the emulated device or few cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.split import supervisor
from service.split.supervisor import front_count
from tests.tiny_model import tiny_settings


def test_auto_is_one_process_on_the_cpu(tmp_path: Path) -> None:
    assert front_count(tiny_settings(tmp_path, device="cpu", cpus=16)) == 0
    assert front_count(tiny_settings(tmp_path, front_processes=3)) == 3
    with pytest.raises(ValueError):
        front_count(tiny_settings(tmp_path, front_processes=-1))


def test_auto_on_cuda_is_half_the_cores_at_most_eight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "nvidia_gpu_present", lambda: True)
    assert front_count(tiny_settings(tmp_path, cpus=16)) == 8
    assert front_count(tiny_settings(tmp_path, cpus=64)) == 8
    assert front_count(tiny_settings(tmp_path, cpus=6)) == 3
    assert front_count(tiny_settings(tmp_path, cpus=2)) == 0
    assert front_count(tiny_settings(tmp_path, cpus=16, emulate_device="b0")) == 0  # never silently
