"""gpu.json bookkeeping (bench/gpu/record.py): merged by every step, the first stop kept, the pytest
summary read from its junit report."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu.record import junit_summary, load, main, phase, stop, update


def test_steps_merge_their_keys_and_the_first_stop_is_kept(tmp_path: Path) -> None:
    update(tmp_path, preflight={"provider": "CUDAExecutionProvider"})
    phase(tmp_path, "export", "done", export={"b0": 12.0})
    stop(tmp_path, "bare", "the session fell back to CPUExecutionProvider")
    stop(tmp_path, "service", "later")
    report = load(tmp_path)
    assert report["preflight"]["provider"] == "CUDAExecutionProvider" and report["export"] == {"b0": 12.0}
    assert report["stopped"] == {"phase": "bare", "reason": "the session fell back to CPUExecutionProvider"}
    assert list(report["phases"]) == ["export", "bare", "service"]


CASE = '<testcase classname="tests.gpu.test_gpu_path" name="{}" time="0.1">{}</testcase>'
JUNIT = (
    '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">'
    + CASE.format("test_a", "")
    + CASE.format("test_b", '<failure message="assert 3 == 4">trace</failure>')
    + CASE.format("test_c", '<skipped message="no CUDA"/>')
    + CASE.format("test_d", '<error message="fixture broke"/>')
    + "</testsuite></testsuites>"
)


def test_the_pytest_summary_comes_from_the_junit_report(tmp_path: Path) -> None:
    junit = tmp_path / "pytest-gpu.xml"
    junit.write_text(JUNIT)
    summary = junit_summary(junit, exit_code=1)
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (1, 1, 1, 1)
    assert {p["test"].rsplit("::", 1)[1]: p["message"] for p in summary["problems"]} == {
        "test_b": "assert 3 == 4",
        "test_c": "no CUDA",
        "test_d": "fixture broke",
    }
    assert main(["--out", str(tmp_path), "pytest", "--junit", str(junit), "--exit-code", "1"]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["pytest"]["failed"] == 1 and report["phases"]["pytest"] == "failed: exit 1"


def test_a_missing_junit_report_is_recorded_not_raised(tmp_path: Path) -> None:
    summary = junit_summary(tmp_path / "absent.xml", exit_code=124)
    assert summary["exit_code"] == 124 and "no junit report" in summary["error"]
