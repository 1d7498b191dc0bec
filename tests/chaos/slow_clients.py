"""The issue's reproduction, measured: N clients each uploading a 300 KB body at 10 bytes/s, and the
latency of normal requests meanwhile, against the server of a given source tree (to compare with
another tree in the same run).

    python -m tests.chaos.slow_clients --repository DIR [--tree PATH] [--clients 300] [--hold 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.chaos.runner import photo
from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


async def slow_client(port: int, outcome: list[tuple[str, float]]) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        outcome.append((f"connect {type(error).__name__}", 0.0))
        return
    head = (
        "POST /classify?variant=lite0 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 300000\r\n\r\n"
    )
    writer.write(head.encode())
    answer = asyncio.ensure_future(reader.read())
    try:
        while not answer.done():
            writer.write(b"\xff" * 10)
            await writer.drain()
            await asyncio.sleep(1.0)
        data = answer.result()
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    except ConnectionError:
        status = "reset"
    except asyncio.CancelledError:  # still held open when the measurement ended
        raise
    finally:
        writer.close()
    outcome.append((status, time.monotonic() - started))


async def normal_latencies(url: str, image: bytes, count: int) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(count):
            started = time.monotonic()
            response = await client.post(
                f"{url}/classify", params={"variant": "lite0"}, content=image,
                headers={"Content-Type": "image/jpeg"},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
    return latencies


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {1000 * statistics.median(values):.1f} ms, p99 {1000 * p99:.1f} ms (n={len(values)})"


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    http_port = free_port()
    command = [
        sys.executable, "-m", "service", "serve", "--repository", str(args.repository), "--models", "lite0",
        "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(free_port()),
        "--intra-op-threads", "1", "--preprocess-workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=args.tree, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return server, http_port


async def measure(args: argparse.Namespace, http_port: int) -> None:
    url = f"http://127.0.0.1:{http_port}"
    image = photo()
    quiet = await normal_latencies(url, image, args.requests)
    outcome: list[tuple[str, float]] = []
    slow = [asyncio.ensure_future(slow_client(http_port, outcome)) for _ in range(args.clients)]
    await asyncio.sleep(3)
    loaded = await normal_latencies(url, image, args.requests)
    _, pending = await asyncio.wait(slow, timeout=args.hold)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    statuses: dict[str, int] = {}
    for status, _ in outcome:
        statuses[status] = statuses.get(status, 0) + 1
    held = [seconds for status, seconds in outcome if status == "408"]
    print(f"tree {args.tree}")
    print(f"  normal requests alone:                 {summary(quiet)}")
    print(f"  with {args.clients} slow uploads (10 B/s):   {summary(loaded)}")
    print(f"  slow uploads answered within {args.hold:.0f} s: {statuses}; still open: {len(pending)}")
    if held:
        print(f"  408 after {min(held):.1f}-{max(held):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--hold", type=float, default=40.0)
    args = parser.parse_args()
    server, http_port = start_server(args)
    try:
        asyncio.run(measure(args, http_port))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
