"""The open-loop load of the scale simulation, in a process of its own (so the controller's threads
never delay an arrival): Poisson arrivals at a rate that follows a piecewise-linear profile, each a
POST /classify through nginx for a model drawn by weight. Arrivals do not wait for answers, and each
latency counts from the arrival's scheduled time, so a slow client loop shows as latency instead of
hiding it (no coordinated omission).

    python -m tests.scale.ramp --url URL --image FILE --profile '[[0, 10], [60, 40], ...]' \
        --models lite0:0.7,b0:0.3 --out records.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp

TIMEOUT_S = 60.0


def rate_at(profile: list[tuple[float, float]], t: float) -> float:
    """Requests/s at `t` seconds, linear between the profile's points, flat outside."""
    if t <= profile[0][0]:
        return profile[0][1]
    for (t0, r0), (t1, r1) in zip(profile, profile[1:], strict=False):
        if t <= t1:
            return r0 + (r1 - r0) * (t - t0) / (t1 - t0) if t1 > t0 else r1
    return profile[-1][1]


def arrivals(profile: list[tuple[float, float]], seed: int) -> list[float]:
    """Poisson arrival times over the profile, by thinning a process at the peak rate."""
    rng = random.Random(seed)
    peak = max(r for _, r in profile)
    end = profile[-1][0]
    times, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return times
        if rng.random() < rate_at(profile, t) / peak:
            times.append(t)


async def one(
    session: aiohttp.ClientSession, url: str, image: bytes, model: str, due: float, epoch: float
) -> dict[str, object]:
    outcome, detail = "ok", ""
    try:
        async with session.post(
            f"{url}/classify",
            params={"variant": model, "top_k": "1"},
            data=image,
            headers={"Content-Type": "image/jpeg"},
        ) as response:
            body = await response.read()
            if response.status == 200:
                if b'"results"' not in body:
                    outcome, detail = "wrong", body[:80].decode(errors="replace")
            else:
                outcome, detail = "error", f"http {response.status}"
    except (aiohttp.ClientError, TimeoutError) as error:
        outcome, detail = "lost", type(error).__name__
    finished = time.monotonic() - epoch
    return {
        "t": round(due, 4),
        "latency": round(finished - due, 5),
        "model": model,
        "outcome": outcome,
        "detail": detail,
    }


async def drive(
    url: str, image: bytes, schedule: list[float], models: list[str], epoch: float
) -> list[dict[str, object]]:
    # One connection per request: a kept-alive connection that nginx closes as it reloads (scaling
    # changes its upstreams) could meet a request on the way; clients retry that, aiohttp's POST does not.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    tasks: list[asyncio.Task[dict[str, object]]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for due, model in zip(schedule, models, strict=True):
            delay = due - (time.monotonic() - epoch)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, url, image, model, due, epoch)))
        return list(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.scale.ramp", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--profile", required=True, help="JSON list of [seconds, requests/s]")
    parser.add_argument("--models", required=True, help="name:weight,...")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--started", required=True, help="file to write the start (time.monotonic) into")
    args = parser.parse_args()
    profile = [(float(t), float(r)) for t, r in json.loads(args.profile)]
    weighted = [(name, float(w)) for name, w in (m.split(":") for m in args.models.split(","))]
    schedule = arrivals(profile, args.seed)
    models = random.Random(args.seed + 1).choices(
        [n for n, _ in weighted], [w for _, w in weighted], k=len(schedule)
    )
    image = Path(args.image).read_bytes()
    epoch = time.monotonic() + 0.5  # CLOCK_MONOTONIC: the same clock in every process
    Path(args.started).write_text(repr(epoch))
    records = asyncio.run(drive(args.url, image, schedule, models, epoch))
    with Path(args.out).open("w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
