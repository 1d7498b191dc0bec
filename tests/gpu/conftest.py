"""GPU tests: where the device check runs them (bench/gpu/run.sh), a skip is a failure.

With EFFNET_REQUIRE_CUDA=1, any test of this folder marked `gpu` that skips (no CUDA session, CuPy or
nvImageCodec missing, a fixture's importorskip) is reported as failed, with the skip's reason: on the
GPU machine a skip means the setup is broken, and a run of skips must not pass."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def skip_reason(longrepr: Any) -> str:
    """The reason of a skip report (pytest keeps it as (file, line, 'Skipped: reason'))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("EFFNET_REQUIRE_CUDA") == "1" and item.get_closest_marker("gpu"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, and EFFNET_REQUIRE_CUDA=1 makes that a failure: {skip_reason(report.longrepr)}"
        )
