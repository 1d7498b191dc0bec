"""What a cut-short device run keeps (bench/gpu/README.md): the diagnosis saves after every case and on
SIGTERM, check.py after every protocol of a server, and one failing protocol costs only its own figure.
Failures are injected on the CPU; the load generator (and, for check.py, the server process) is replaced
by a stand-in, since the bookkeeping around them is the unit under test."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import check, diagnose, serving


class StandInServer:
    """What check.py uses of bench.servers.ServerProcess, without a process."""

    def __init__(self, log: Path) -> None:
        self.argv = ["python", "-m", "service", "--log-level", "WARNING"]
        self.base_url = "http://127.0.0.1:9"
        self.pid = os.getpid()
        self.log_path = log

    def __enter__(self) -> StandInServer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _load(rate: float) -> dict[str, Any]:
    return {"images_per_s": rate, "ok": 10, "p50_ms": 1.0, "p99_ms": 2.0}


def test_a_diagnosis_killed_in_a_server_case_keeps_the_finished_cases(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    def case(repository: Path, settings: dict[str, str], kind: str, *args: Any) -> dict[str, Any]:
        ran.append(kind)
        if len(ran) == 3:  # the third case is where run.sh's `timeout` strikes
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        return _load(100.0 * len(ran))

    monkeypatch.setattr(diagnose, "server_case", case)
    out = tmp_path / "out"
    code = diagnose.main(
        [
            "--repository",
            str(tiny_check_repository),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--sections",
            "server",
        ]
    )
    report = json.loads((out / "diagnose.json").read_text())
    assert code == 1 and report["stopped"] == "terminated by signal 15 (a timeout?)"
    assert ran[:2] == ["v2_pixels_x16", "v2_pixels"]  # the triggering figure's case first
    assert report["server"]["default/v2_pixels_x16"]["images_per_s"] == 100.0
    assert report["server"]["default/v2_pixels"]["images_per_s"] == 200.0
    assert report["server"]["one_session/v2_pixels"] == "running"  # the case that was cut off
    assert "machine" in report and not (out / ".diagnose.json.partial").exists()


def test_a_failing_diagnosis_case_is_recorded_and_the_next_runs(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def case(repository: Path, settings: dict[str, str], kind: str, *args: Any) -> dict[str, Any]:
        if settings.get("bucket_sessions") == "off":
            raise RuntimeError("server exited with 1")
        return _load(50.0)

    monkeypatch.setattr(diagnose, "server_case", case)
    out = tmp_path / "out"
    code = diagnose.main(
        [
            "--repository",
            str(tiny_check_repository),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--sections",
            "server",
        ]
    )
    server = json.loads((out / "diagnose.json").read_text())["server"]
    assert code == 0 and "server exited with 1" in server["one_session/v2_pixels"]["error"]
    assert server["one_instance/v2_pixels"]["images_per_s"] == 50.0 and len(server) == len(
        diagnose.SERVER_CASES
    )


@pytest.fixture
def stand_in_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.servers

    def service(repository: Path, models: list[str], settings: dict[str, str], log: Path) -> Any:
        return StandInServer(log), 9

    monkeypatch.setattr(bench.servers, "service", service)


def run_check(repository: Path, out: Path) -> tuple[int, dict[str, Any]]:
    code = check.main(
        ["--profile", "dry", "--repository", str(repository), "--out", str(out), "--budget-s", "60"]
    )
    return code, json.loads((out / "gpu.json").read_text())


def test_a_failing_protocol_keeps_the_others(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_server: None
) -> None:
    asked: list[str] = []

    def saturate(kind: str, *args: Any) -> dict[str, Any]:
        asked.append(kind)
        if kind == "v2_stream_pixels":
            raise RuntimeError("StatusCode.UNIMPLEMENTED")
        return _load(16.0 if kind == "v2_pixels_x16" else 1.0)

    monkeypatch.setattr(serving, "saturate", saturate)
    code, report = run_check(tiny_check_repository, tmp_path / "out")
    assert code == 0 and "stopped" not in report
    runs = report["service"]["nvimgcodec"]
    assert runs["b0/v2_stream_pixels"] == "failed: RuntimeError: StatusCode.UNIMPLEMENTED"
    assert runs["b0/v2_image"]["images_per_s"] == 1.0  # the protocol after the failure ran
    assert runs["b0/v2_pixels_x16"]["images_per_s"] == 16.0
    assert asked.index("v2_pixels_x16") < asked.index("v2_stream_pixels")
    assert report["service"]["pillow"]["b0/http"]["images_per_s"] == 1.0


def test_a_check_killed_in_a_protocol_keeps_the_protocols_before_it(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_server: None
) -> None:
    def saturate(kind: str, *args: Any) -> dict[str, Any]:
        if kind == "v2_pixels_x16":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return _load(2.0)

    monkeypatch.setattr(serving, "saturate", saturate)
    code, report = run_check(tiny_check_repository, tmp_path / "out")
    assert code == 1 and report["stopped"]["reason"] == "terminated by signal 15 (a timeout?)"
    runs = report["service"]["nvimgcodec"]
    assert runs["b0/http"]["images_per_s"] == 2.0 and runs["b0/v2_pixels"]["images_per_s"] == 2.0
    assert "b0/v2_pixels_x16" not in runs and "b0/v2_stream_pixels" not in runs


@pytest.mark.parametrize("known", [True, False])
def test_the_split_mode_case_runs_only_where_the_server_knows_front_processes(
    tiny_check_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known: bool
) -> None:
    import bench.servers

    started: list[dict[str, str]] = []

    def service(repository: Path, models: list[str], settings: dict[str, str], log: Path) -> Any:
        started.append(settings)
        return StandInServer(log), 9

    monkeypatch.setattr(bench.servers, "service", service)
    monkeypatch.setattr(serving, "saturate", lambda kind, *args: _load(3.0))
    monkeypatch.setattr(check, "split_mode_known", lambda: known)
    code, report = run_check(tiny_check_repository, tmp_path / "out")
    assert code == 0
    if known:
        assert started[-1]["front_processes"] == "2" and started[-1]["decoder"] == "nvimgcodec"
        assert sorted(k for k in report["service"]["split"] if k.startswith("b0/")) == [
            "b0/v2_pixels",
            "b0/v2_stream_pixels",
        ]
        assert report["figures"]["b0: service V2 pixels, front processes / bare ORT best"] > 0
    else:
        assert all("front_processes" not in s for s in started) and "split" not in report["service"]
        assert (
            report["phases"]["service split"]
            == "skipped: the server's settings have no EFFNET_FRONT_PROCESSES"
        )


@pytest.mark.parametrize("rate", [0.001, 1e9])
def test_a_slow_runtime_leaves_the_later_phases_time_to_the_diagnosis(
    tiny_check_repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stand_in_server: None,
    no_runtime_options: list[str],
    rate: float,
) -> None:
    monkeypatch.setattr(serving, "saturate", lambda kind, *args: _load(rate))
    out = tmp_path / "out"
    argv = ["--profile", "dry", "--repository", str(tiny_check_repository), "--out", str(out)]
    code = check.main([*argv, "--budget-s", "60", "--yield-if-slow"])
    report = json.loads((out / "gpu.json").read_text())
    slow = rate < 1
    assert code == 0 and report["phases"]["service"] == "done"
    assert report["phases"]["runtime options"].startswith("skipped: the runtime is slow") is slow
    assert (no_runtime_options == []) is slow
    assert diagnose.service_is_slow(out / "gpu.json") is slow
