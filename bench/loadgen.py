"""Closed-loop (N clients, each sends its next request when the last one is answered) and open-loop
(requests due at a fixed rate, sent whether or not earlier ones were answered) load on a Target.

Every request's due time, latency and status are recorded. Open-loop latency runs from the time a
request was *due*, so a client that falls behind cannot hide queueing (no coordinated omission).
The client's own CPU time is measured over the window, so a client that limits the result shows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.cpu import CpuMeter, CpuUse
from bench.stats import Sample, summarize
from bench.targets import Target

# Open loop: requests in flight beyond this are not sent but counted as "client_dropped".
MAX_IN_FLIGHT = 512


@dataclass(frozen=True)
class LoadSpec:
    mode: str  # "closed" or "open"
    duration_s: float
    warmup_s: float = 1.0
    concurrency: int = 1  # closed loop
    rate: float = 0.0  # open loop, requests per second


@dataclass
class LoadResult:
    spec: LoadSpec
    summary: dict[str, Any]
    cpu: CpuUse


async def run_load(target: Target, spec: LoadSpec, server_pid: int | None = None) -> LoadResult:
    """Drive `target` per `spec`; figures cover the window after warm-up only."""
    await target.open(spec.concurrency if spec.mode == "closed" else MAX_IN_FLIGHT)
    try:
        samples: list[Sample] = []
        meter = CpuMeter(server_pid)
        t0 = time.perf_counter()
        window = (spec.warmup_s, spec.warmup_s + spec.duration_s)
        measuring = asyncio.get_running_loop().call_later(spec.warmup_s, meter.start)
        if spec.mode == "closed":
            await _closed(target, spec, t0, samples)
        elif spec.mode == "open":
            await _open(target, spec, t0, samples)
        else:
            raise ValueError(f"unknown mode {spec.mode!r}")
        measuring.cancel()
        cpu = meter.stop()
    finally:
        await target.close()
    return LoadResult(spec=spec, summary=summarize(samples, window), cpu=cpu)


async def _closed(target: Target, spec: LoadSpec, t0: float, samples: list[Sample]) -> None:
    end = t0 + spec.warmup_s + spec.duration_s
    counter = iter(range(1 << 62))

    async def client() -> None:
        while (now := time.perf_counter()) < end:
            status = await target.send(next(counter))
            samples.append(Sample(now - t0, time.perf_counter() - now, status))

    await asyncio.gather(*(client() for _ in range(spec.concurrency)))


async def _open(target: Target, spec: LoadSpec, t0: float, samples: list[Sample]) -> None:
    if spec.rate <= 0:
        raise ValueError("open loop needs a positive rate")
    total = int((spec.warmup_s + spec.duration_s) * spec.rate)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(index: int, offset: float) -> None:
        status = await target.send(index)
        samples.append(Sample(offset, time.perf_counter() - (t0 + offset), status))

    for index in range(total):
        offset = index / spec.rate
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_IN_FLIGHT:
            samples.append(Sample(offset, 0.0, "client_dropped"))
            continue
        task = asyncio.create_task(one(index, offset))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
