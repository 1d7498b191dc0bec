"""The response cache and request priorities, measured (issue 24; figures in bench/README.md).

    python -m bench.cache_priority --repository models/repository [--model b0] [--seconds 10]

1. Hit against miss, one client, over HTTP (/classify) and our gRPC: a miss is a photo the server has
   not seen (decode, resize, inference), a hit the same photo again (hash and lookup only).
2. Throughput at 16 clients when half the requests repeat a photo already answered, the other half are
   new: cache off (the model does not opt in), in-process, Redis (a real redis-server on this machine).
3. A page-like client (one request every 200 ms, what a person clicking does) while a bulk job of 16
   clients saturates the server: its p50/p99 with priorities (bulk low, page high) and without (both
   normal).

Photos: the 500 ImageNet validation photos in /work/shared/imagenet-sample (benchmark use only); a "new"
photo is one of them with a few unique bytes after its JPEG end marker (decodes the same, hashes anew).
Writes bench/results/cache-priority.json with the machine's load average at each step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.servers import ServerProcess, service
from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = Path("/work/shared/imagenet-sample")
LOGS = Path(tempfile.gettempdir()) / "effnet-bench-logs"


def photos() -> list[bytes]:
    files = sorted(PHOTOS.glob("*.JPEG"))
    if not files:
        raise SystemExit(f"no photos in {PHOTOS}")
    return [f.read_bytes() for f in files]


def unique(photo: bytes, n: int) -> bytes:
    """The same picture, other bytes: trailing data after the JPEG end marker is ignored by decoders."""
    return photo + n.to_bytes(8, "little")


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

    return {"n": len(ordered), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99)}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def repository_with(source: Path, model: str, cache: bool) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="effnet-cache-bench-"))
    shutil.copytree(source / model, folder / model, symlinks=True)
    (folder / model / "config.json").write_text(json.dumps({"response_cache": cache}))
    return folder


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------------------------------------- clients
class Clients:
    """HTTP and gRPC senders to one server; each returns (seconds, cached)."""

    def __init__(self, server: ServerProcess, grpc_port: int, model: str) -> None:
        self.url = f"{server.base_url}/classify"
        self.model = model
        self.http = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = classifier_pb2_grpc.ClassifierStub(self.channel)

    async def http_send(self, body: bytes, priority: str = "normal") -> tuple[float, bool]:
        elapsed, answer = await self.http_answer(body, priority)
        return elapsed, bool(answer["cached"])

    async def http_answer(self, body: bytes, priority: str = "normal") -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = await self.http.post(
            self.url,
            params={"variant": self.model, "top_k": 5, "priority": priority},
            content=body,
            headers={"content-type": "image/jpeg"},
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return elapsed, answer

    async def grpc_send(self, body: bytes, priority: str = "normal") -> tuple[float, bool]:
        started = time.perf_counter()
        request = classifier_pb2.ClassifyRequest(model=self.model, top_k=5, images=[body], priority=priority)
        reply = await self.stub.Classify(request, timeout=120)
        return time.perf_counter() - started, reply.cached

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()


async def hit_and_miss(clients: Clients, bodies: list[bytes], count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for series, (name, send) in enumerate((("http", clients.http_send), ("grpc", clients.grpc_send))):
        offset = 10_000 * (series + 1)
        misses, hits = [], []
        for i in range(count):
            seconds, cached = await send(unique(bodies[i % len(bodies)], offset + i))
            assert not cached
            misses.append(seconds)
        hot = unique(bodies[0], offset + count)
        await send(hot)
        for _ in range(count):
            seconds, cached = await send(hot)
            assert cached
            hits.append(seconds)
        out[name] = {"miss": quantiles(misses), "hit": quantiles(hits)}
        out[name]["miss_over_hit_p50"] = round(out[name]["miss"]["p50_ms"] / out[name]["hit"]["p50_ms"], 1)
    return out


async def closed_loop(
    clients: int, seconds: float, next_request: Callable[[], Awaitable[tuple[float, bool]]]
) -> dict[str, Any]:
    samples: list[float] = []
    hits = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal hits
        while time.perf_counter() < end:
            elapsed, cached = await next_request()
            samples.append(elapsed)
            hits += cached

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {"images_per_s": round(len(samples) / wall, 1), "hit_share": round(hits / len(samples), 3),
            **quantiles(samples)}  # fmt: skip


async def repeats(clients: Clients, bodies: list[bytes], seconds: float, start: int) -> dict[str, Any]:
    """Half the requests repeat one of 20 photos answered before the run; half are new photos."""
    hot = [unique(bodies[i], start + i) for i in range(20)]
    for body in hot:
        await clients.http_send(body)
    counter = iter(range(1 << 40))

    async def next_request() -> tuple[float, bool]:
        i = next(counter)
        body = hot[i % len(hot)] if i % 2 == 0 else unique(bodies[i % len(bodies)], start + 1000 + i)
        return await clients.http_send(body)

    return await closed_loop(16, seconds, next_request)


async def page_under_bulk(
    clients: Clients, bodies: list[bytes], seconds: float, prioritised: bool
) -> dict[str, Any]:
    bulk_priority, page_priority = ("low", "high") if prioritised else ("normal", "normal")
    stop = asyncio.Event()
    counter = iter(range(1 << 40))
    bulk_done = 0

    async def bulk() -> None:
        nonlocal bulk_done
        while not stop.is_set():
            i = next(counter)
            await clients.http_send(bodies[i % len(bodies)], bulk_priority)
            bulk_done += 1

    workers = [asyncio.create_task(bulk()) for _ in range(16)]
    await asyncio.sleep(2.0)  # saturated
    page: list[float] = []
    server: dict[str, list[float]] = {"preprocess_ms": [], "queue_ms": [], "total_ms": []}
    end = time.perf_counter() + seconds
    i = 0
    started_bulk = bulk_done
    while time.perf_counter() < end:
        elapsed, answer = await clients.http_answer(bodies[(7 * i) % len(bodies)], page_priority)
        page.append(elapsed)
        for key, values in server.items():
            values.append(answer["timings"][key] / 1000)
        i += 1
        await asyncio.sleep(0.2)
    bulk_rate = (bulk_done - started_bulk) / seconds
    stop.set()
    await asyncio.gather(*workers)
    # The server's own view of the page requests: decode (incl. waiting for a thread), batch queue, all
    # of it; the rest of the client's latency is transport and this machine's CPU contention.
    inside = {key: quantiles(values) for key, values in server.items()}
    return {"page": quantiles(page), "page_server_timings": inside, "bulk_images_per_s": round(bulk_rate, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = photos()
    source = args.repository.resolve()
    model = args.model
    result: dict[str, Any] = {"model": model, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "cpus": os.cpu_count(), "photos": len(bodies)}  # fmt: skip
    base = {"cache_size_mb": "256"}

    def with_server(
        repository: Path, settings: dict[str, str], work: Callable[[Clients], Awaitable[Any]]
    ) -> Any:
        server, grpc_port = service(repository, [model], settings, LOGS / "cache-priority.log")
        with server:

            async def go() -> Any:
                clients = Clients(server, grpc_port, model)
                try:
                    return await work(clients)
                finally:
                    await clients.close()

            return asyncio.run(go())

    cached_repo = repository_with(source, model, cache=True)
    plain_repo = repository_with(source, model, cache=False)
    redis = Redis()
    try:
        result["load_before"] = load()
        if args.only == "priorities":
            result["page_under_bulk"] = page_runs(plain_repo, base, with_server, bodies, args.page_seconds)
            return result
        result["hit_vs_miss"] = with_server(
            cached_repo, base, lambda c: hit_and_miss(c, bodies, args.requests)
        )
        result["hit_vs_miss"]["load"] = load()
        throughput: dict[str, Any] = {}
        for name, repository, settings in (
            ("off", plain_repo, base),
            ("memory", cached_repo, base),
            ("redis", cached_repo, {**base, "cache_url": redis.url}),
        ):
            throughput[name] = with_server(
                repository,
                settings,
                lambda c: repeats(c, bodies, args.seconds, 100_000 * (len(throughput) + 1)),
            )
            throughput[name]["load"] = load()
        result["repeats_50pct_16_clients"] = throughput
        result["page_under_bulk"] = page_runs(plain_repo, base, with_server, bodies, args.page_seconds)
    finally:
        redis.stop()
        shutil.rmtree(cached_repo, ignore_errors=True)
        shutil.rmtree(plain_repo, ignore_errors=True)
    return result


def page_runs(
    repository: Path,
    settings: dict[str, str],
    with_server: Callable[..., Any],
    bodies: list[bytes],
    seconds: float,
) -> dict[str, Any]:
    priorities: dict[str, Any] = {}
    for name, prioritised in (("without", False), ("with", True)):
        work = partial(page_under_bulk, bodies=bodies, seconds=seconds, prioritised=prioritised)
        priorities[name] = with_server(repository, settings, work)
        priorities[name]["load"] = load()
    return priorities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_priority", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--model", default="b0")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=100, help="per hit/miss series")
    parser.add_argument(
        "--page-seconds", type=float, default=40.0, help="page-like client under the bulk job, per run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only", choices=["priorities"], help="rerun one part, merged into the existing results file"
    )
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cache-priority.json"
    if args.only and path.exists():
        result = {**json.loads(path.read_text()), f"{args.only}_rerun": result}
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
