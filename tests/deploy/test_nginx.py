"""The load balancer's config: `nginx -t` on the repo's files, and the routing rules it must keep."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    lifts the 20 s read and send limits, and still answers UNAVAILABLE when no replica can take it."""
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
