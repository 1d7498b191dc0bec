"""schemathesis against the running server's own /openapi.json: generated requests for every
operation; no 5xx, and every response matches its documented status code, content type and schema.
EFFNET_FUZZ_EXAMPLES raises the budget per operation (make soak does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.robustness.conftest import LiveServer, ServerFactory

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

EXAMPLES = max(10, int(os.environ.get("EFFNET_FUZZ_EXAMPLES", "120")) // 4)
# not_a_server_error is replaced by our own assertion: 504 (a tiny timeout_ms) and 503 are documented.
DOCUMENTED_5XX = {503, 504}
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, model_repository: Path) -> LiveServer:
    return server_factory(model_repository, "--models", "lite0")


def test_openapi_operations(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    tested = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=server.http_url, checks=CHECKS, timeout=60)
            assert response.status_code < 500 or response.status_code in DOCUMENTED_5XX, response.text

        run()
        tested.append(operation.label)
    assert server.process.poll() is None
    print(f"schemathesis: {len(tested)} operations, up to {EXAMPLES} examples each")
