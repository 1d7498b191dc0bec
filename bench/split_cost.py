"""Server CPU per one-image request, one process against split mode (issue 36).

Starts the server on a model that costs nothing (tests/tiny_model.py) or on the emulated device, sends
one-image V2 gRPC pixel requests (or HTTP PNG bodies) from this process with a fixed number in flight,
and measures, over the same window, every server process's CPU and its busiest thread's:

  python -m bench.split_cost --fronts 0,1,2 --requests 3000 --rounds 3 [--emulate b0-fp16:10] [--http]
                             [--server-cpus 1 --client-cpus 0]

Modes alternate within each round, so a drift of the shared machine touches them alike; medians are
printed per mode, with the projected one-image ceiling of a 16-core host (at most 8 fronts):
min(N / front CPU per request, 1 / engine busiest-thread CPU per image).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil

from bench.pinning import parse_cpus
from service._generated.inference import grpc_service_pb2 as pb
from service._generated.inference import grpc_service_pb2_grpc as pb_grpc
from tests.e2e.conftest import free_ports
from tests.tiny_model import SIZE, png, write_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Round:
    mode: str
    requests: int
    seconds: float
    server_cpu_ms: float  # summed over every server process, per request
    front_thread_ms: float  # the busiest thread of the busiest front (or of the one process), per request
    engine_thread_us: float  # the engine's busiest thread per image (one process: its busiest thread)
    rate: float


def _threads(pid: int) -> dict[tuple[int, int], float]:
    found: dict[tuple[int, int], float] = {}
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for process in processes:
        try:
            for thread in process.threads():
                found[(process.pid, thread.id)] = thread.user_time + thread.system_time
        except psutil.Error:
            pass
    return found


def _roles(pid: int) -> dict[int, str]:
    roles = {pid: "single"}
    for child in psutil.Process(pid).children():
        line = child.cmdline()
        roles[child.pid] = line[line.index("--split-role") + 1] if "--split-role" in line else "other"
    if len(roles) > 1:
        roles[pid] = "supervisor"
    return roles


def start_server(
    repository: Path,
    fronts: int,
    emulate: str,
    cpus: frozenset[int] | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_ports(2)
    env = {
        **os.environ,
        "EFFNET_FRONT_PROCESSES": str(fronts),
        "EFFNET_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    if emulate:
        env["EFFNET_EMULATE_DEVICE"] = emulate
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--repository", str(repository), "--host", "127.0.0.1",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2).status_code == 200:
                return process, http_port, grpc_port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server not ready")


async def _grpc_load(port: int, count: int, in_flight: int) -> None:
    pixels = np.zeros((1, 3, SIZE, SIZE), np.uint8)
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
    request.raw_input_contents.append(pixels.tobytes())
    # Several channels: split mode's fronts share the port per connection.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    left = count

    async def worker(index: int) -> None:
        nonlocal left
        stub = stubs[index % len(stubs)]
        while left > 0:
            left -= 1
            await stub.ModelInfer(request, timeout=30)

    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    for channel in channels:
        await channel.close()


async def _http_load(port: int, count: int, in_flight: int) -> None:
    body = png()
    left = count
    limits = httpx.Limits(max_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                response = await client.post(
                    f"http://127.0.0.1:{port}/classify",
                    params={"top_k": 1},
                    content=body,
                    headers={"content-type": "image/png"},
                )
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(in_flight)))


def measure(process: subprocess.Popen[bytes], load: object, mode: str, requests: int) -> Round:
    roles = _roles(process.pid)
    before = _threads(process.pid)
    started = time.monotonic()
    asyncio.run(load)  # type: ignore[arg-type]
    seconds = time.monotonic() - started
    after = _threads(process.pid)
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    per_process: dict[int, float] = {}
    for (pid, _), value in used.items():
        per_process[pid] = per_process.get(pid, 0.0) + value
    fronts = [key for key in used if roles.get(key[0]) in ("front", "single")]
    engines = [key for key in used if roles.get(key[0]) in ("engine", "single")]
    front_busiest = max((used[k] for k in fronts), default=0.0)
    engine_busiest = max((used[k] for k in engines), default=0.0)
    return Round(
        mode,
        requests,
        seconds,
        sum(per_process.values()) / requests * 1000,
        front_busiest / requests * 1000,
        engine_busiest / requests * 1e6,
        requests / seconds,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fronts", default="0,1,2")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emulate", default="")
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--server-cpus", type=parse_cpus, help="pin every server process here, e.g. 1")
    parser.add_argument("--client-cpus", type=parse_cpus, help="and this load generator here, e.g. 0")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    repository = Path(tempfile.mkdtemp(prefix="split-cost-"))
    write_model(repository, "tiny")
    modes = [int(n) for n in args.fronts.split(",")]
    servers = {n: start_server(repository, n, args.emulate, args.server_cpus) for n in modes}
    rounds: list[Round] = []
    try:
        for _ in range(args.rounds):
            for n, (process, http_port, grpc_port) in servers.items():
                warm = _http_load(http_port, 200, 8) if args.http else _grpc_load(grpc_port, 200, 8)
                asyncio.run(warm)
                load = (
                    _http_load(http_port, args.requests, args.in_flight)
                    if args.http
                    else _grpc_load(grpc_port, args.requests, args.in_flight)
                )
                rounds.append(measure(process, load, f"fronts={n}", args.requests))
                print(json.dumps(rounds[-1].__dict__), flush=True)
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(30)
    summary = {}
    for n in modes:
        mine = [r for r in rounds if r.mode == f"fronts={n}"]
        median = {
            key: round(statistics.median(getattr(r, key) for r in mine), 4)
            for key in ("server_cpu_ms", "front_thread_ms", "engine_thread_us", "rate")
        }
        front_ms, engine_us = median["front_thread_ms"], median["engine_thread_us"]
        median["ceiling_16_cores_8_fronts"] = round(min(8 / (front_ms / 1000), 1 / (engine_us / 1e6)), 0)
        summary[f"fronts={n}"] = median
    pinned = {"server_cpus": sorted(args.server_cpus or ()), "client_cpus": sorted(args.client_cpus or ())}
    print(json.dumps({"load": os.getloadavg(), **pinned, "summary": summary}, indent=1))
    if args.out:
        args.out.write_text(
            json.dumps({**pinned, "rounds": [r.__dict__ for r in rounds], "summary": summary}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
