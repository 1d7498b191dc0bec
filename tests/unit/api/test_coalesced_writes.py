"""CoalescedWrites (service/api/http/limits.py): an answer's header and body writes reach the socket as
one write, so a replica killed between them cannot leave a proxy with headers and no body. A fake
transport stands in for asyncio's."""

from __future__ import annotations

import asyncio
from typing import cast

from service.api.http.limits import CoalescedWrites


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _wrapped() -> tuple[CoalescedWrites, _Transport]:
    transport = _Transport()
    return CoalescedWrites(cast(asyncio.Transport, transport), asyncio.get_running_loop()), transport


async def test_writes_of_one_turn_go_out_as_one() -> None:
    wrapped, transport = _wrapped()
    wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    wrapped.write(bytearray(b"{}"))
    assert transport.writes == [] and wrapped.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    wrapped.write(b"next")
    await asyncio.sleep(0)
    assert transport.writes[1:] == [b"next"]


async def test_close_sends_what_is_pending_first() -> None:
    wrapped, transport = _wrapped()
    wrapped.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    wrapped.close()
    assert transport.writes == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"] and transport.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert len(transport.writes) == 1


async def test_abort_and_a_closed_connection_drop_what_is_pending() -> None:
    wrapped, transport = _wrapped()
    wrapped.write(b"partial")
    wrapped.abort()
    await asyncio.sleep(0)
    assert transport.writes == [] and transport.aborted

    wrapped, transport = _wrapped()
    wrapped.write(b"late")
    transport.closed = True  # the client went away before the loop's next turn
    await asyncio.sleep(0)
    assert transport.writes == []


async def test_everything_else_is_the_transport_itself() -> None:
    wrapped, transport = _wrapped()
    assert wrapped.get_extra_info("peername") == "info:peername"
    assert not wrapped.is_closing()
    transport.closed = True
    assert wrapped.is_closing()
