"""A small reverse proxy that serves an upstream under a path prefix (`/effnet/...` -> `/...`), as
nginx does with `location /effnet/ { proxy_pass http://upstream/; }`. It records every path asked
for, so a test can show that a page never escaped the prefix."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class PrefixProxy:
    url: str
    prefix: str
    requested: list[str] = field(default_factory=list)

    @property
    def outside_prefix(self) -> list[str]:
        return [path for path in self.requested if not path.startswith(f"{self.prefix}/")]


@contextmanager
def prefix_proxy(upstream_port: int, prefix: str = "/effnet") -> Iterator[PrefixProxy]:
    proxy = PrefixProxy(url="", prefix=prefix)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

        def forward(self) -> None:
            proxy.requested.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.path == prefix:
                self.reply(301, [("Location", f"{prefix}/")], b"")
                return
            if not self.path.startswith(f"{prefix}/"):
                self.reply(404, [("Content-Type", "text/plain")], b"outside the prefix\n")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
            try:
                upstream.request(self.command, self.path[len(prefix) :], body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                self.reply(response.status, kept, b"" if self.command == "HEAD" else data)
            finally:
                upstream.close()

        def reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_HEAD = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}{prefix}/"
    thread = threading.Thread(target=server.serve_forever, name="prefix-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
