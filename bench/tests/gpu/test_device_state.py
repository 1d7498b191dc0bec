"""What the check records about the GPU, read from nvidia-smi (a stand-in script on PATH here): null
without it, every field it knows when a driver refuses one, per-process memory by pid."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench.gpu import device_state

# Answers like nvidia-smi: refuses a query naming `clocks_event_reasons.active` (an older driver), else
# one value per field, and a compute-apps list with this test's pid twice and another's.
STAND_IN = """#!/bin/sh
case "$1" in
  --query-compute-apps=*) printf '%s, 700\\n%s, 24\\n1, 5000\\n' "$PID" "$PID"; exit 0 ;;
  *clocks_event_reasons*,*) echo 'Field "clocks_event_reasons.active" is not valid.'; exit 2 ;;
  *clocks_event_reasons*) exit 2 ;;
  --query-gpu=memory.used) echo 1234; exit 0 ;;
  --query-gpu=*) echo P0; exit 0 ;;
esac
exit 1
"""


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(STAND_IN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PID", str(os.getpid()))


def test_without_nvidia_smi_or_a_gpu_everything_is_null(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    assert device_state.gpu_state() is None and device_state.gpu_memory_used_mib() is None
    assert device_state.process_gpu_memory_mib(os.getpid()) is None
    assert device_state.cudnn_version("cpu") is None


def test_a_field_the_driver_lacks_costs_only_that_field(nvidia_smi: None) -> None:
    state = device_state.gpu_state()
    assert state is not None and state["pstate"] == "P0" and state["clocks.max.sm"] == "P0"
    assert state["clocks_event_reasons.active"] is None
    assert device_state.gpu_memory_used_mib() == 1234.0


def test_a_process_gpu_memory_is_the_sum_of_its_own_lines(nvidia_smi: None) -> None:
    assert device_state.process_gpu_memory_mib(os.getpid()) == 724.0
    assert device_state.process_gpu_memory_mib(999999) == 0.0
