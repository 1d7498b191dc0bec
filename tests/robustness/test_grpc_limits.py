"""gRPC connection limits against the real server (a subprocess on loopback): the cap on concurrent
streams per connection, the connection age, and keepalive enforcement (a client pinging too often
is sent away)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from tests.robustness.conftest import LiveServer, ServerFactory
from tests.tiny_model import png, write_model

pytestmark = pytest.mark.slow

MAX_STREAMS = 2
AGE_S = 1.0
AGE_GRACE_S = 0.5


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("tiny-repository")
    write_model(repository, "tiny")
    return repository


def start(server_factory: ServerFactory, repository: Path, **env: str) -> LiveServer:
    return server_factory(
        repository, "--models", "tiny", env={"EFFNET_WARMUP_RUNS": "0", **env}
    )  # fmt: skip


def request() -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model="tiny", top_k=1, images=[png()])


class HeldStream:
    """A ClassifyStream kept open: requests go in on demand, answers are read as they come."""

    def __init__(self, stub: pb_grpc.ClassifierStub) -> None:
        self.outbox: asyncio.Queue[pb.ClassifyRequest | None] = asyncio.Queue()
        self.call = stub.ClassifyStream(self._requests())

    async def _requests(self) -> AsyncIterator[pb.ClassifyRequest]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def ask(self, within: float = 10) -> pb.ClassifyResponse:
        await self.outbox.put(request())
        return await asyncio.wait_for(self.call.read(), within)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Half-close and wait for the server to end the stream."""
        await self.outbox.put(None)
        assert await asyncio.wait_for(self.call.read(), 10) == grpc.aio.EOF


async def test_streams_above_the_per_connection_cap_wait(
    server_factory: ServerFactory, tiny_repository: Path
) -> None:
    server = start(server_factory, tiny_repository, EFFNET_GRPC_MAX_CONCURRENT_STREAMS=str(MAX_STREAMS))
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        held = [HeldStream(stub) for _ in range(MAX_STREAMS)]
        for stream in held:
            assert (await stream.ask()).results[0].predictions
        # A third call on the same connection has no stream to run on until one of these ends.
        third = asyncio.ensure_future(stub.Classify(request(), timeout=30))
        await asyncio.sleep(1.5)
        assert not third.done()
        # Other connections are free (a local subchannel pool: grpc would share this connection).
        separate = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(server.grpc_address, options=separate) as other:
            assert (await pb_grpc.ClassifierStub(other).Classify(request(), timeout=10)).results
        assert not third.done()
        await held[0].close()
        assert (await asyncio.wait_for(third, 10)).results
        await held[1].close()
    server.stop()


async def test_connections_are_sent_away_at_their_maximum_age(
    server_factory: ServerFactory, tiny_repository: Path
) -> None:
    server = start(
        server_factory,
        tiny_repository,
        EFFNET_GRPC_MAX_CONNECTION_AGE_S=str(AGE_S),
        EFFNET_GRPC_MAX_CONNECTION_AGE_GRACE_S=str(AGE_GRACE_S),
    )
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        stream = HeldStream(stub)
        assert (await stream.ask()).results
        opened = time.monotonic()
        # Past age + grace the connection is closed under the held stream.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(stream.call.read(), AGE_S + AGE_GRACE_S + 10)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        assert time.monotonic() - opened >= AGE_S
        # The channel reconnects by itself; unary calls keep working.
        assert (await stub.Classify(request(), timeout=10)).results
    server.stop()


@pytest.mark.parametrize("ping_every_ms, sent_away", [(200, True), (60_000, False)])
async def test_clients_pinging_too_often_are_sent_away(
    server_factory: ServerFactory, tiny_repository: Path, ping_every_ms: int, sent_away: bool
) -> None:
    server = start(server_factory, tiny_repository, EFFNET_GRPC_MIN_CLIENT_PING_INTERVAL_S="5")
    options = [
        ("grpc.keepalive_time_ms", ping_every_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(server.grpc_address, options=options) as channel:
        stream = HeldStream(pb_grpc.ClassifierStub(channel))
        assert (await stream.ask()).results
        if sent_away:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(stream.call.read(), 15)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        else:
            await asyncio.sleep(3)
            assert (await stream.ask()).results  # the same stream still serves
        stream.call.cancel()
    server.stop()
