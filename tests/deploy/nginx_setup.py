"""Run the repo's nginx config outside Docker: same nginx.conf, upstream groups pointed at loopback.

compose's upstreams.conf names the `effnet-replica` service (resolved by Docker's DNS, with the
`resolve` parameter of nginx >= 1.27.3). Here each of its `server` lines becomes one line per local
replica, keeping the repo's parameters (max_fails, fail_timeout) and dropping what needs Docker's
DNS (`resolve`, the `resolver` directive). Listen ports are swapped for free loopback ports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

NGINX_DIR = Path(__file__).resolve().parents[2] / "docker" / "nginx"
HTTP_PORT = 8000
GRPC_PORT = 8001

_SERVER = re.compile(r"^(?P<indent>\s*)server\s+(?P<host>[\w.-]+):(?P<port>\d+)(?P<params>[^;]*);\s*$")
_RESOLVER = re.compile(r"^\s*resolver\s[^;]*;\s*$")


def loopback_upstreams(text: str, replicas: Mapping[int, Sequence[int]]) -> str:
    """compose's upstreams.conf, each `server host:PORT` expanded to 127.0.0.1:p for p in replicas[PORT]."""
    out: list[str] = []
    servers = 0
    for line in text.splitlines():
        if _RESOLVER.match(line):
            continue
        match = _SERVER.match(line)
        if match is None:
            out.append(line)
            continue
        servers += 1
        params = " ".join(p for p in match["params"].split() if p != "resolve")
        for port in replicas[int(match["port"])]:
            out.append(f"{match['indent']}server 127.0.0.1:{port} {params};".replace(" ;", ";"))
    if servers == 0:
        raise ValueError("upstreams.conf has no `server host:port` lines")
    return "\n".join(out) + "\n"


def loopback_main_config(text: str, http_port: int, grpc_port: int) -> str:
    """nginx.conf with its two listen ports moved to free loopback ports; everything else verbatim."""
    text, n_http = re.subn(rf"(?m)^(\s*)listen {HTTP_PORT};", rf"\1listen 127.0.0.1:{http_port};", text)
    text, n_grpc = re.subn(
        rf"(?m)^(\s*)listen {GRPC_PORT} http2;", rf"\1listen 127.0.0.1:{grpc_port} http2;", text
    )
    if (n_http, n_grpc) != (1, 1):
        raise ValueError(f"want one HTTP and one gRPC listen line in nginx.conf, got {n_http} and {n_grpc}")
    return text


def write_prefix(
    prefix: Path, http_port: int, grpc_port: int, replica_http: Sequence[int], replica_grpc: Sequence[int]
) -> Path:
    """Lay out an nginx prefix (config, logs dir) and return the main config's path."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    main = loopback_main_config((NGINX_DIR / "nginx.conf").read_text(), http_port, grpc_port)
    upstreams = loopback_upstreams(
        (NGINX_DIR / "upstreams.conf").read_text(), {HTTP_PORT: replica_http, GRPC_PORT: replica_grpc}
    )
    (prefix / "nginx.conf").write_text(main)
    (prefix / "upstreams.conf").write_text(upstreams)
    return prefix / "nginx.conf"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def globals_for(prefix: Path) -> str:
    """-g directives: foreground, with pid and error log inside the temp prefix."""
    return f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'logs' / 'error.log'} info;"


def check_config(nginx: str, prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf), "-g", globals_for(prefix)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
