"""The load balancer's config: `nginx -t` on the repo's files, and the routing rules it must keep."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_ports
from tests.waiting import until_sync

from . import nginx_setup
from .tooling import require_tool, unavailable

MAIN = (nginx_setup.NGINX_DIR / "nginx.conf").read_text()
UPSTREAMS = (nginx_setup.NGINX_DIR / "upstreams.conf").read_text()


@pytest.fixture
def prefix() -> Iterator[Path]:
    # Not under pytest's 0700 tmp_path: nginx workers drop to an unprivileged user and must traverse it.
    path = Path(tempfile.mkdtemp(prefix="effnet-nginx-"))
    os.chmod(path, 0o755)
    yield path
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def nginx() -> str:
    found = nginx_setup.nginx_binary()
    if found is None:
        unavailable("nginx is not installed")
        raise AssertionError("unreachable")
    return found


def test_nginx_accepts_the_config(prefix: Path) -> None:
    conf = nginx_setup.write_prefix(prefix, 18000, 18001, [19000, 19002], [19001, 19003])
    result = nginx_setup.check_config(nginx(), prefix, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_rejects_a_broken_config(prefix: Path) -> None:
    conf = nginx_setup.write_prefix(prefix, 18000, 18001, [19000], [19001])
    conf.write_text(conf.read_text().replace("grpc_pass grpc://effnet_grpc;", "grpc_pass grpc://nowhere;"))
    assert nginx_setup.check_config(nginx(), prefix, conf).returncode != 0


def test_loopback_upstreams_keep_the_repo_parameters() -> None:
    text = nginx_setup.loopback_upstreams(UPSTREAMS, {8000: [1, 2], 8001: [3]})
    directives = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "resolve" not in directives, "Docker's DNS is not here"
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=1 fail_timeout=5s;", text) == ["1", "2", "3"]


def test_upstream_groups_are_defined_and_used() -> None:
    defined = set(re.findall(r"upstream\s+(\w+)\s*\{", UPSTREAMS))
    used = set(re.findall(r"(?:proxy_pass http|grpc_pass grpc)://(\w+);", MAIN))
    assert used == defined == {"effnet_http", "effnet_grpc"}
    assert "include upstreams.conf;" in MAIN
    # Compose: service names, resolved by Docker's DNS at run time (so scaling needs no reload).
    assert re.findall(r"server effnet-replica:(\d+) resolve max_fails", UPSTREAMS) == ["8000", "8001"]
    # ... and again as never-failed backups, so nginx always has a replica to try.
    backups = re.findall(r"server effnet-replica:(\d+) resolve backup max_fails=0;", UPSTREAMS)
    assert backups == ["8000", "8001"]
    assert "resolver 127.0.0.11" in UPSTREAMS


def test_retries_go_to_another_replica_on_connection_failure() -> None:
    for prefix in ("proxy", "grpc"):
        conditions = re.search(rf"{prefix}_next_upstream ([^;]+);", MAIN)
        assert conditions is not None
        assert {"error", "timeout", "non_idempotent"} <= set(conditions[1].split())
        assert "http_504" not in conditions[1], "a deadline the client set is not retried"
        tries = re.search(rf"{prefix}_next_upstream_tries (\d+);", MAIN)
        assert tries is not None and int(tries[1]) >= 2
    assert re.search(r"listen 8001 http2;", MAIN), "gRPC needs HTTP/2 on the listener"


def test_nginx_is_installed_for_check_deploy() -> None:
    # Cheap canary so a missing nginx is a failure under `make check-deploy`, not a silent skip.
    assert Path(nginx()).exists()
    assert require_tool("nginx")


def test_streams_are_not_cut_when_idle() -> None:
    """The gRPC streams keep nginx's connection to the replica open between requests: their location
    lifts the short read and send limits, and still answers UNAVAILABLE when no replica can take it."""
    block = re.search(r"location ~ \^/\(([^)]*)\)\$ \{([^}]*)\}", MAIN)
    assert block is not None
    methods = {m.replace("\\.", ".") for m in block[1].split("|")}
    assert methods == {
        "effnet.v1.Classifier/ClassifyStream",
        "inference.GRPCInferenceService/ModelStreamInfer",
    }
    body = block[2]
    assert "grpc_pass grpc://effnet_grpc;" in body
    assert "error_page 502 503 504 = @grpc_unavailable;" in body
    for directive in ("grpc_read_timeout", "grpc_send_timeout"):
        assert re.search(rf"{directive} 1h;", body), directive


def map_values(variable: str) -> list[tuple[str, str]]:
    """The (regex, value) lines of the nginx `map` that sets `variable`."""
    block = re.search(rf"map \S+ \${variable} \{{\n(.*?)\n\s*\}}\n", MAIN, re.S)
    assert block is not None, variable
    return re.findall(r'"~([^"]+)" (\S+);', block[1])


def bound(variable: str, value: str) -> str:
    """What nginx's map gives for `value`: the first regex that matches (nginx's order), else ""."""
    return next((result for pattern, result in map_values(variable) if re.search(pattern, value)), "")


def test_a_replica_gets_a_bound_derived_from_the_deadline() -> None:
    """1 s without a deadline or with one under 6 s; 5 s up to 30 s; 20 s beyond (see nginx.conf)."""
    assert re.search(r"^\s*proxy_read_timeout 1s;", MAIN, re.M) and re.search(
        r"^\s*grpc_read_timeout 1s;", MAIN, re.M
    )
    http = {ms: bound("effnet_http_bound", ms) for ms in ("500", "5999", "6000", "29999", "30000", "600000")}
    assert http == {"500": "", "5999": "", "6000": "5s", "29999": "5s", "30000": "20s", "600000": "20s"}
    # grpc-timeout: an integer of up to 8 digits and a unit (H, M, S, m, u, n).
    cases = {
        "5S": "", "5999m": "", "999999u": "", "99999999n": "",
        "6S": "5s", "20S": "5s", "19999m": "5s", "7000000u": "5s",
        "30S": "20s", "60000m": "20s", "1M": "20s", "2H": "20s", "45000000u": "20s",
    }  # fmt: skip
    assert {value: bound("effnet_grpc_bound", value) for value in cases} == cases
    for tier in ("5s", "20s"):
        for kind, upstream in (
            ("proxy", "proxy_pass http://effnet_http"),
            ("grpc", "grpc_pass grpc://effnet_grpc"),
        ):
            location = re.findall(rf"location /lb/bound/{tier}/ \{{([^}}]*)\}}", MAIN)
            assert any(f"{kind}_read_timeout {tier};" in body and upstream in body for body in location), (
                kind,
                tier,
            )


class SlowReplica(ThreadingHTTPServer):
    """A stand-in replica that begins every answer after `delay_s`, echoing what it was sent."""

    def __init__(self, delay_s: float) -> None:
        delay = delay_s

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(delay)
                answer = json.dumps({"path": self.path, "body": body.decode()}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_nginx_gives_up_on_a_silent_replica_by_the_request_deadline(prefix: Path) -> None:
    """Real nginx, this config, two replicas that take 1.5 s to begin an answer: a request without a
    deadline is given up on each after 1 s (504 once the tries are spent); one with a 10 s deadline
    goes through the 5 s location with its path, query and body unchanged."""
    replicas = [SlowReplica(1.5) for _ in range(2)]
    http_port, grpc_port = free_ports(2)
    ports = [r.server_address[1] for r in replicas]
    conf = nginx_setup.write_prefix(prefix, http_port, grpc_port, ports, [grpc_port + 1])  # type: ignore[list-item]
    process = subprocess.Popen(
        [nginx(), "-p", str(prefix), "-c", str(conf), "-g", nginx_setup.globals_for(prefix)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http_port}"
        until_sync(lambda: _listening(http_port), within_s=10, what="nginx listening")
        started = time.monotonic()
        quick = httpx.post(f"{url}/classify?variant=b0", content=b"photo", timeout=30)
        quick_s = time.monotonic() - started
        started = time.monotonic()
        patient = httpx.post(f"{url}/classify?variant=b0&timeout_ms=10000", content=b"photo", timeout=30)
        patient_s = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(10)
        for replica in replicas:
            replica.shutdown()
    assert quick.status_code == 504 and 2.5 < quick_s < 5, (quick.status_code, quick_s)
    assert patient.status_code == 200 and 1.4 < patient_s < 3, (patient.text, patient_s)
    assert patient.json() == {"path": "/classify?variant=b0&timeout_ms=10000", "body": "photo"}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
