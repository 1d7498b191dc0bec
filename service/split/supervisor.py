"""Split mode's processes: the supervisor (the process the user started) checks the ports, starts one
engine process and N fronts (each `python -m service serve` with the same arguments and a role), and
restarts whichever dies. SIGTERM drains the fronts first (they turn not ready and finish what they
hold), then stops the engine.

The fronts share the HTTP and gRPC ports with SO_REUSEPORT: the kernel spreads new connections over
them. The engine listens on a Unix socket in a private temporary directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from service.api.ports import PortInUse, check_grpc, claim_http
from service.runtime.providers import nvidia_gpu_present
from service.settings import Settings

log = logging.getLogger("service.split")

MAX_AUTO_FRONTS = 8
MIN_AUTO_CORES = 4
POLL_S = 0.1
RESTART_PAUSE_S = 0.5
MB = 1024 * 1024


def front_count(settings: Settings) -> int:
    """`front_processes` as a number: auto is 0 (one process) on the CPU provider or below 4 cores,
    else half the cores, at most 8."""
    chosen = settings.front_processes
    if chosen != "auto":
        if chosen < 0:
            raise ValueError("front_processes must be 0 or more")
        return chosen
    on_cuda = settings.device == "cuda" or (settings.device == "auto" and nvidia_gpu_present())
    if not on_cuda or settings.emulate_device or settings.cores < MIN_AUTO_CORES:
        return 0
    return min(MAX_AUTO_FRONTS, settings.cores // 2)


@dataclass
class _Child:
    role: str
    index: int
    process: subprocess.Popen[bytes]
    restarts: int = 0


def supervise(settings: Settings, fronts: int, argv: list[str]) -> int:
    """Run the engine and `fronts` fronts until SIGTERM/SIGINT; restart any that dies meanwhile."""
    try:  # fail at once, with the one line, when a port is taken (the fronts share them later)
        claim_http(settings.host, settings.http_port, reuse_port=True).close()
        check_grpc(settings.host, settings.grpc_port, reuse_port=True)
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="effnet-split-")
    socket_path = str(Path(folder) / "engine.sock")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(role: str, index: int) -> subprocess.Popen[bytes]:
        if role == "engine" and os.path.exists(socket_path):
            os.unlink(socket_path)
        command = [
            sys.executable, "-m", "service", *argv,
            "--split-role", role, "--split-socket", socket_path,
            "--split-index", str(index), "--split-fronts", str(fronts),
        ]  # fmt: skip
        return subprocess.Popen(command)

    engine = _Child("engine", 0, start("engine", 0))
    children = [engine, *(_Child("front", i, start("front", i)) for i in range(fronts))]
    log.info("event=split_started fronts=%d engine_pid=%d socket=%s", fronts, engine.process.pid, socket_path)
    exit_code = 0
    while not stopping:
        time.sleep(POLL_S)
        for child in children:
            code = child.process.poll()
            if code is None or stopping:
                continue
            if child.role == "engine" and code == 1 and child.restarts == 0 and settings.strict:
                log.error("event=engine_failed_start exit_code=%d", code)
                stopping, exit_code = True, 1
                break
            log.warning("event=split_process_died role=%s index=%d exit_code=%d restarting=true",
                        child.role, child.index, code)  # fmt: skip
            time.sleep(RESTART_PAUSE_S if child.restarts else 0)
            child.process = start(child.role, child.index)
            child.restarts += 1
    # Drain: the fronts first (not ready, finish what they hold), then the engine.
    for child in children[1:]:
        _signal(child.process, signal.SIGTERM)
    for child in children[1:]:
        _wait(child.process, settings.drain_timeout_s + 5)
    _signal(engine.process, signal.SIGTERM)
    _wait(engine.process, settings.drain_timeout_s + 10)
    try:
        os.unlink(socket_path)
    except OSError:
        pass
    os.rmdir(folder) if os.path.isdir(folder) and not os.listdir(folder) else None
    log.info("event=split_stopped exit_code=%d", exit_code)
    return exit_code


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        process.send_signal(signum)


def _wait(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
