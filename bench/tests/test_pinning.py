"""`bench.run --server-cpus`: cpu lists, the split between server and client cores, and that a thread's
mask moves to the client cores only inside the block and back after it, while what it starts keeps
the server's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from bench.figures import figures
from bench.pinning import Pinning, format_cpus, parse_cpus


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("0-1", {0, 1}), ("2,5", {2, 5}), ("0-3,8", {0, 1, 2, 3, 8}), (" 1 , 3-4 ", {1, 3, 4})],
)
def test_cpu_lists_parse_and_print_back(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus
    assert parse_cpus(format_cpus(frozenset(cpus))) == cpus


def test_cpu_lists_print_as_ranges() -> None:
    assert format_cpus(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1-x"])
def test_bad_cpu_lists_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="cpu"):
        parse_cpus(text)


def test_the_client_gets_the_rest_unless_told() -> None:
    usable = frozenset(range(16))
    assert Pinning.split("0-1", available=usable) == Pinning(frozenset({0, 1}), frozenset(range(2, 16)))
    assert Pinning.split("0-1", "4-5", usable).client == {4, 5}


@pytest.mark.parametrize(
    ("server", "client", "message"),
    [
        ("0-1", "1-2", "overlap on 1"),
        ("0-3", "", "no cpus left"),
        ("4", "", "not all usable"),
        ("0", "9", "client cpus 9 are not all usable"),
    ],
)
def test_impossible_splits_are_refused(server: str, client: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pinning.split(server, client, frozenset(range(4)))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_a_thread_holds_the_server_cores_and_visits_the_client_cores() -> None:
    usable = sorted(os.sched_getaffinity(0))
    pinning = Pinning.split(str(usable[0]), str(usable[1]))
    seen: dict[str, object] = {}

    def in_a_thread() -> None:  # the mask is per thread: keep pytest's own thread as it was
        pinning.hold_server_cores()
        seen["server"] = os.sched_getaffinity(0)
        started = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        )
        seen["child"] = started.stdout.strip()
        with pinning.on_client_cores():
            seen["inside"] = os.sched_getaffinity(0)
        seen["after"] = os.sched_getaffinity(0)

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen == {
        "server": {usable[0]},
        "child": f"[{usable[0]}]",
        "inside": {usable[1]},
        "after": {usable[0]},
    }


def _result(pinning: dict[str, str] | None) -> dict[str, object]:
    ref = {
        "pipeline_limit_1080p": 100.0,
        "bare_ort": {"best_images_per_s": 150.0},
        "inference_cpu_ms": 5.0,
        "preprocess_1080p": {"cpu_ms": 5.0},
    }
    run = {
        "server": "service",
        "settings": {},
        "model": "b0",
        "protocol": "http",
        "input": "1080p",
        "mode": "closed",
        "concurrency": 16,
        "throughput": 90.0,
        "client_bound": False,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "cpu": {"client": 1.0, "server": 2.0, "machine": 3.0, "other": 0.0, "cores": 4},
    }
    return {"meta": {"pinning": pinning}, "references": {"b0": ref}, "runs": [run]}


def test_a_pinned_run_does_not_shrink_the_limit_for_the_client() -> None:
    shared = figures(_result(None))["efficiency"]["b0"]
    pinned = figures(_result({"server_cpus": "0-1", "client_cpus": "2-3"}))["efficiency"]["b0"]
    assert shared["efficiency"] == pinned["efficiency"] == 0.9
    # Sharing: the client's one core of four leaves 3/4 of the limit. Pinned: it took none of the server's.
    assert shared["efficiency_excluding_client_cpu"] == 1.2
    assert pinned["efficiency_excluding_client_cpu"] == 0.9
