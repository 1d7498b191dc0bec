"""A port in use ends start-up with one line that names it and the setting that changes it, status 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("which", "flag"), [("HTTP", "--http-port"), ("gRPC", "--grpc-port")])
def test_a_taken_port_is_one_line_and_status_2(
    server_factory: ServerFactory, model_repository: Path, which: str, flag: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        server = server_factory(model_repository, "--models", "lite0", flag, str(taken), wait=False)
        assert server.process.wait(timeout=60) == 2
    output = server.log().strip()
    assert output.count("\n") == 0, output  # one line, no traceback
    assert f"{which} port {taken} on 127.0.0.1 is already in use" in output
    assert flag in output and f"EFFNET_{which.upper()}_PORT" in output
