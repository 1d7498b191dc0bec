"""The two listening ports, claimed before anything else starts: a port another process holds ends
start-up with one line that names the port and the setting that changes it (exit status 2), not with a
traceback after the models have loaded."""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """A port we must listen on is taken; the message is the one line to print."""


def _socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # Nagle's algorithm and delayed ACKs add about 40 ms to every answer on a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # split mode: every front listens on the port, the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _in_use(what: str, host: str, port: int, flag: str, variable: str, exc: OSError) -> PortInUse:
    why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
    return PortInUse(
        f"{what} port {port} on {host} {why}; choose another with {flag} or {variable}, "
        "or stop the process that holds it"
    )


def claim_http(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The bound HTTP socket (uvicorn listens on it). Raises PortInUse."""
    sock = _socket(host, port, reuse_port)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _in_use("HTTP", host, port, "--http-port", "EFFNET_HTTP_PORT", exc) from None
    sock.set_inheritable(True)
    return sock


def check_grpc(host: str, port: int, reuse_port: bool = False) -> None:
    """Raise PortInUse when the gRPC port cannot be listened on now (grpc binds it itself later)."""
    sock = _socket(host, port, reuse_port)
    try:
        sock.bind((host, port))
        sock.listen(1)
    except OSError as exc:
        raise _in_use("gRPC", host, port, "--grpc-port", "EFFNET_GRPC_PORT", exc) from None
    finally:
        sock.close()
