"""Slow clients and connection floods against the real server (a subprocess on loopback), with raw
sockets: a body not sent in time gets 408 and the connection closed; so do headers not sent in
time; above the connection cap requests get a fast 503 while health checks still answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.robustness.conftest import LiveServer, ServerFactory
from tests.tiny_model import png, write_model

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 1.5
HEADER_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 24
HEALTH_RESERVE = 4


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("tiny-repository")
    write_model(repository, "tiny")
    return repository


@pytest.fixture(scope="module")
def deadline_server(server_factory: ServerFactory, tiny_repository: Path) -> LiveServer:
    return server_factory(
        tiny_repository,
        "--models", "tiny",
        env={
            "EFFNET_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "EFFNET_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "EFFNET_WARMUP_RUNS": "0",
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def capped_server(server_factory: ServerFactory, tiny_repository: Path) -> LiveServer:
    return server_factory(
        tiny_repository,
        "--models", "tiny",
        env={
            "EFFNET_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "EFFNET_HTTP_HEALTH_RESERVE": str(HEALTH_RESERVE),
            "EFFNET_HTTP_HEADER_TIMEOUT_S": "60",
            "EFFNET_WARMUP_RUNS": "0",
        },
    )  # fmt: skip


def refused(server: LiveServer, reason: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'effnet_http_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"effnet_http_refused_total{{reason={reason!r}}} not exported")


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), within)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split()[1])


def head(target: str, length: int | None, extra: str = "") -> bytes:
    lines = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n{extra}"
    if length is not None:
        lines += f"Content-Length: {length}\r\n"
    return (lines + "\r\n").encode()


async def slow_upload(port: int, size: int, rate_bytes_s: float, within: float) -> tuple[int, float, bytes]:
    """Headers at once, then the body at `rate_bytes_s`, until the server answers and closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head("/classify?variant=tiny&top_k=1", size))
    await writer.drain()
    answer = asyncio.ensure_future(read_until_closed(reader, within))
    sent = 0
    try:
        while not answer.done() and sent < size:
            try:
                writer.write(b"\xff" * 10)
                await writer.drain()
            except ConnectionError:
                break
            sent += 10
            await asyncio.sleep(10 / rate_bytes_s)
        response = await answer
    finally:
        writer.close()
    return status_of(response), time.monotonic() - started, response


async def classify_ok(server: LiveServer) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.http_url}/classify",
            params={"variant": "tiny", "top_k": 1},
            content=png(),
            headers={"Content-Type": "image/png"},
            timeout=10,
        )
    return response.status_code


async def test_slow_uploads_get_408_and_are_closed_while_others_are_served(
    deadline_server: LiveServer,
) -> None:
    before = refused(deadline_server, "body_timeout")
    clients = 60
    uploads = [
        asyncio.ensure_future(slow_upload(deadline_server.http_port, 300_000, 10, BODY_TIMEOUT_S + 10))
        for _ in range(clients)
    ]
    await asyncio.sleep(0.5)
    # While the slow uploads are held, a normal request is served.
    assert await classify_ok(deadline_server) == 200
    results = await asyncio.gather(*uploads)
    for status, elapsed, response in results:
        assert status == 408, response[:300]
        assert b"connection: close" in response.lower()
        assert b"request_timeout" in response
        assert BODY_TIMEOUT_S * 0.8 <= elapsed <= BODY_TIMEOUT_S + 8, elapsed
    assert refused(deadline_server, "body_timeout") - before == clients
    assert "Exception in ASGI application" not in deadline_server.log()


async def test_an_upload_in_pieces_within_the_deadline_is_served(deadline_server: LiveServer) -> None:
    image = png(size=(300, 200))
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.http_port)
    writer.write(head("/classify?variant=tiny&top_k=1", len(image)))
    for start in range(0, len(image), len(image) // 4 + 1):
        writer.write(image[start : start + len(image) // 4 + 1])
        await writer.drain()
        await asyncio.sleep(BODY_TIMEOUT_S / 8)
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert status_of(response) == 200, response


async def test_chunked_and_expect_continue_uploads_are_served(deadline_server: LiveServer) -> None:
    image = png()
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.http_port)
    writer.write(head("/classify?variant=tiny&top_k=1", None, "Transfer-Encoding: chunked\r\n"))
    half = len(image) // 2
    for part in (image[:half], image[half:]):
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.write(b"0\r\n\r\n")
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert status_of(response) == 200, response

    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.http_port)
    writer.write(head("/classify?variant=tiny&top_k=1", len(image), "Expect: 100-continue\r\n"))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status_of(interim) == 100, interim
    writer.write(image)
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert status_of(response) == 200, response


async def test_a_declared_oversized_body_is_refused_at_once(deadline_server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.http_port)
    writer.write(head("/classify?variant=tiny&top_k=1", 64 * 1024 * 1024))
    await writer.drain()
    started = time.monotonic()
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert status_of(response) == 413, response
    assert time.monotonic() - started < BODY_TIMEOUT_S


@pytest.mark.parametrize(
    "sent", [b"", b"POST /classify?variant=tiny&top_k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
)
async def test_headers_not_sent_in_time_get_408_and_close(deadline_server: LiveServer, sent: bytes) -> None:
    before = refused(deadline_server, "header_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.http_port)
    started = time.monotonic()
    writer.write(sent)
    await writer.drain()
    response = await read_until_closed(reader, HEADER_TIMEOUT_S + 8)
    writer.close()
    assert status_of(response) == 408, response
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.8
    assert refused(deadline_server, "header_timeout") == before + 1


async def test_above_the_connection_cap_requests_get_a_fast_503_and_health_still_answers(
    capped_server: LiveServer,
) -> None:
    port = capped_server.http_port
    before = refused(capped_server, "connection_limit")
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.3)  # the server has accepted them all
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head("/classify?variant=tiny&top_k=1", len(png())) + png())
        response = await read_until_closed(reader, 5)
        writer.close()
        assert time.monotonic() - started < 2.0
        assert status_of(response) == 503, response
        assert b"retry-after: 1" in response.lower() and b"overloaded" in response

        async with httpx.AsyncClient() as client:
            for path in ("/healthz", "/readyz", "/v2/health/ready"):
                answer = await client.get(f"{capped_server.http_url}{path}", timeout=5)
                assert answer.status_code == 200, (path, answer.text)
        assert refused(capped_server, "connection_limit") == before + 1

        # The reserve is bounded too: with it used up, health checks are refused as well.
        idle += [await asyncio.open_connection("127.0.0.1", port) for _ in range(HEALTH_RESERVE)]
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(await read_until_closed(reader, 5)) == 503
        writer.close()
    finally:
        for _, idle_writer in idle:
            idle_writer.close()
    await asyncio.sleep(0.5)
    assert await classify_ok(capped_server) == 200
