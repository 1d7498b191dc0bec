"""Soak (make soak; skipped unless EFFNET_SOAK_SECONDS is set): minutes of mixed variants, protocols
and bad input against one server. RSS and open file descriptors stay flat, the queue does not grow,
nothing answers 5xx other than 503 under load."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from tests.robustness import corpus
from tests.robustness.conftest import ServerFactory

SECONDS = float(os.environ.get("EFFNET_SOAK_SECONDS", "0"))
CONCURRENCY = 12
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
FD_GROWTH_LIMIT = 16

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SECONDS <= 0, reason="soak runs with EFFNET_SOAK_SECONDS (make soak)"),
]


def _sample(process: psutil.Process) -> tuple[int, int]:
    return process.memory_info().rss, process.num_fds()


async def test_soak(server_factory: ServerFactory, model_repository: Path, photo_1080p: bytes) -> None:
    server = server_factory(model_repository, "--models", "b0,lite0", "--max-queue-size", "32")
    process = psutil.Process(server.process.pid)
    bad = [(body, ctype) for body, ctype, status in corpus.images().values() if status != 200]
    good = [corpus.jpeg((640, 480)), photo_1080p, corpus.sixteen_bit_png(), corpus.animated_gif()]
    codes: Counter[str] = Counter()
    rng = random.Random(0)

    async def worker(client: httpx.AsyncClient, stub: pb_grpc.ClassifierStub) -> None:
        while time.monotonic() < end:
            variant = rng.choice(["b0", "lite0"])
            roll = rng.random()
            if roll < 0.25:
                body, ctype = rng.choice(bad)
                response = await client.post(
                    f"/classify?variant={variant}", content=body, headers={"content-type": ctype}
                )
                codes[f"http-bad-{response.status_code}"] += 1
            elif roll < 0.7:
                response = await client.post(f"/classify?variant={variant}&top_k=3", content=rng.choice(good))
                codes[f"http-{response.status_code}"] += 1
            else:
                images = [rng.choice(good + [b[0] for b in bad[:3]])]
                try:
                    await stub.Classify(pb.ClassifyRequest(model=variant, images=images), timeout=30)
                    codes["grpc-OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[f"grpc-{exc.code().name}"] += 1

    samples: list[tuple[int, int]] = []
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=60) as client,
        grpc.aio.insecure_channel(server.grpc_address) as channel,
    ):
        stub = pb_grpc.ClassifierStub(channel)
        end = time.monotonic() + min(30.0, SECONDS / 4)  # warm-up: allocator pools, caches
        await asyncio.gather(*(worker(client, stub) for _ in range(CONCURRENCY)))
        baseline = _sample(process)
        end = time.monotonic() + SECONDS
        workers = asyncio.gather(*(worker(client, stub) for _ in range(CONCURRENCY)))
        while not workers.done():
            await asyncio.sleep(5)
            samples.append(_sample(process))
        await workers
        models = (await client.get("/v1/models")).json()["models"]
    final = _sample(process)
    print(f"soak {SECONDS:.0f} s: {dict(codes)}")
    peak_mib = max(s[0] for s in samples) / 2**20
    print(f"RSS {baseline[0] / 2**20:.0f} -> {final[0] / 2**20:.0f} MiB (max {peak_mib:.0f})")
    print(f"fds {baseline[1]} -> {final[1]} (max {max(s[1] for s in samples)})")
    assert not [code for code in codes if code.endswith(("-500", "-INTERNAL", "-UNKNOWN"))], codes
    assert codes["http-200"] > 0 and codes["grpc-OK"] > 0
    assert final[0] - baseline[0] < RSS_GROWTH_LIMIT
    assert final[1] - baseline[1] < FD_GROWTH_LIMIT
    assert all(m["batcher"]["queue_depth"] == 0 for m in models)
    assert server.stop() == 0
