"""CPU time of the load generator, the server under test and the whole machine over a window.

"other" is what neither used: other engineers' jobs on a shared machine. Figures are in cores
(1.0 = one core busy for the whole window).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import psutil


@dataclass(frozen=True)
class CpuUse:
    client: float
    server: float | None
    machine: float
    other: float | None
    cores: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _process_tree_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class CpuMeter:
    def __init__(self, server_pid: int | None = None) -> None:
        self._server_pid = server_pid
        self._me = psutil.Process(os.getpid())
        self._started: tuple[float, float, float | None, float] | None = None

    def _client_seconds(self) -> float:
        t = self._me.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        server = _process_tree_seconds(self._server_pid) if self._server_pid else None
        self._started = (time.perf_counter(), self._client_seconds(), server, _machine_busy_seconds())

    def stop(self) -> CpuUse:
        cores = psutil.cpu_count() or 1
        if self._started is None:  # the run ended before the window began
            return CpuUse(0.0, None, 0.0, None, cores)
        wall0, client0, server0, machine0 = self._started
        wall = max(time.perf_counter() - wall0, 1e-9)
        client = (self._client_seconds() - client0) / wall
        machine = (_machine_busy_seconds() - machine0) / wall
        server = None
        if self._server_pid and server0 is not None:
            server = (_process_tree_seconds(self._server_pid) - server0) / wall
        other = None if server is None else max(machine - client - server, 0.0)
        return CpuUse(client=client, server=server, machine=machine, other=other, cores=cores)


def wait_for_quiet(
    server_pid: int | None, max_wait_s: float, threshold_cores: float = 0.3
) -> tuple[float, float]:
    """Wait (at most `max_wait_s`) until other jobs use less than `threshold_cores`, sampled over
    half a second at a time; returns (seconds waited, the last sample's other-cores)."""
    start = time.perf_counter()
    while True:
        server0 = _process_tree_seconds(server_pid) if server_pid else 0.0
        me0 = psutil.Process(os.getpid()).cpu_times()
        machine = psutil.cpu_percent(interval=0.5) / 100 * (psutil.cpu_count() or 1)
        me1 = psutil.Process(os.getpid()).cpu_times()
        server = (_process_tree_seconds(server_pid) - server0) / 0.5 if server_pid else 0.0
        mine = (me1.user + me1.system - me0.user - me0.system) / 0.5
        other = max(machine - server - mine, 0.0)
        waited = time.perf_counter() - start
        if other < threshold_cores or waited >= max_wait_s:
            return waited, other
