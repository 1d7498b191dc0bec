"""Every way bench/gpu/check.py can stop leaves a gpu.json saying what it had and why it stopped: each
failure is injected here, on the CPU (the service phase is stubbed where it is not the point)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from bench.gpu import check

CPU = "CPUExecutionProvider"


def run(repository: Path, out: Path, *extra: str, profile: str = "dry") -> tuple[int, dict[str, Any]]:
    code = check.main(["--profile", profile, "--repository", str(repository), "--out", str(out), *extra])
    return code, json.loads((out / "gpu.json").read_text())


@pytest.fixture
def no_service(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The service phase replaced by a stub recording the decoders it was asked for."""
    asked: list[str] = []

    def fake(repository: Path, models: list[str], decoder: str, *args: Any) -> dict[str, Any]:
        asked.append(decoder)
        return {"stub": True}

    monkeypatch.setattr(check, "service_runs", fake)
    return asked


def test_a_cpu_fallback_stops_the_bare_run_and_is_recorded(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_service: list[str]
) -> None:
    real = ort.InferenceSession

    def falls_back(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        assert providers[0][0] == "CUDAExecutionProvider" and providers[0][1]["use_tf32"] == "0"
        return real(path, sess_options=sess_options, providers=[CPU])  # what a missing cuDNN does

    monkeypatch.setattr(ort, "InferenceSession", falls_back)
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", "60", profile="gpu")
    assert code == 1
    assert (
        report["stopped"]["phase"] == "bare"
        and "fell back to CPUExecutionProvider" in report["stopped"]["reason"]
    )
    assert report["bare"] == {} and report["memory"] == {} and no_service == []  # nothing measured after it
    assert report["environment"]["onnxruntime"] == ort.__version__


def test_a_session_error_is_recorded_and_the_check_goes_on(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_service: list[str]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA failure 999: unknown error")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", "60")
    assert code == 0 and "stopped" not in report
    assert report["bare"]["b0"] == "failed: RuntimeError: CUDA failure 999: unknown error"
    assert report["memory"]["b0"].startswith("failed: RuntimeError")
    assert no_service == ["pillow", "nvimgcodec"]
    assert report["phases"]["bare (other variants)"] == "done"


def test_a_budget_of_5_s_ends_in_time_with_what_fitted(
    tiny_check_repository: Path, tmp_path: Path, no_service: list[str]
) -> None:
    started = time.monotonic()
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", "5")
    assert time.monotonic() - started < 8
    assert code == 0 and report["budget_s"] == 5
    assert report["bare"]["b0"]["best_images_per_s"] > 0  # the first phase fitted
    assert report["service"]["pillow"].startswith("skipped: time")  # 8 s estimated: did not
    assert no_service == []


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_no_budget_measures_nothing_and_says_so(
    tiny_check_repository: Path, tmp_path: Path, budget: str
) -> None:
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", budget)
    assert code == 1 and report["budget_s"] == float(budget)  # not the profile's 150 s
    assert report["stopped"] == {
        "phase": "check",
        "reason": f"no time budget (--budget-s {budget}): nothing measured",
    }
    assert report["bare"] == {} and "environment" in report


def test_a_tiny_budget_skips_every_phase_and_records_each(
    tiny_check_repository: Path, tmp_path: Path, no_service: list[str]
) -> None:
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", "0.5")
    assert code == 0
    assert report["bare"]["b0"].startswith("skipped: time") and report["bare"]["b0-fp16"].startswith(
        "skipped"
    )
    assert report["phases"]["memory"].startswith("skipped: time")
    assert report["service"]["nvimgcodec"].startswith("skipped: time") and no_service == []


def test_sigterm_from_a_timeout_is_recorded_with_what_was_measured(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: Any) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return {}

    monkeypatch.setattr(check, "memory_flat", killed)
    code, report = run(tiny_check_repository, tmp_path / "out", "--budget-s", "60")
    assert code == 1 and report["stopped"]["reason"] == "terminated by signal 15 (a timeout?)"
    assert report["bare"]["b0"]["best_images_per_s"] > 0  # measured before the signal: kept


def test_a_missing_repository_stops_with_a_reason(tmp_path: Path) -> None:
    code, report = run(tmp_path / "empty", tmp_path / "out", "--budget-s", "60")
    assert (
        code == 1
        and report["stopped"]["phase"] == "models"
        and "did the export run" in report["stopped"]["reason"]
    )


def test_what_run_sh_wrote_before_is_kept(
    tiny_check_repository: Path, tmp_path: Path, no_service: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu.json").write_text(
        json.dumps({"preflight": {"provider": CPU}, "phases": {"preflight": "done"}})
    )
    _, report = run(tiny_check_repository, out, "--budget-s", "1")
    assert report["preflight"] == {"provider": CPU} and report["phases"]["preflight"] == "done"
    assert "memory" in report["phases"]
