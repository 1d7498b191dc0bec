"""The listening ports claimed at start: a taken port is one clear line; the HTTP socket is one that
asyncio gives TCP_NODELAY (without it, kept-alive connections wait ~40 ms on delayed ACKs)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from service.api.ports import PortInUse, check_grpc, claim_http


def test_a_taken_port_names_itself_and_its_setting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse, match=f"HTTP port {port} on 127.0.0.1 is already in use.*--http-port"):
            claim_http("127.0.0.1", port)
        with pytest.raises(PortInUse, match="gRPC port .* EFFNET_GRPC_PORT"):
            check_grpc("127.0.0.1", port)


async def test_connections_on_the_claimed_http_socket_get_tcp_nodelay() -> None:
    sock = claim_http("127.0.0.1", 0)
    port = sock.getsockname()[1]
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("socket")
            accepted.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(accepted, 5) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
