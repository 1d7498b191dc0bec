"""The observation: one admission per request, the label from the admitted call, the engine's label
rule asked only for a request that was not admitted, and the request id on the call."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.observe import http_codes, observed
from service.core.engine import Engine
from service.errors import UnknownModel
from service.metrics import Metrics
from tests.unit.conftest import EngineStarter

CODES = http_codes("test")


class CountingEngine:
    """The engine with its label rule and admissions counted."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.labels = 0
        self.admissions = 0

    def label(self, name: str | None) -> str:
        self.labels += 1
        return self.engine.label(name)

    def admit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.admissions += 1
        return self.engine.admit(*args, **kwargs)


def count(metrics: Metrics, model: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "effnet_requests_total", {"protocol": "test", "model": model, "code": code}
    )
    return value or 0.0


async def test_an_admitted_request_resolves_its_name_once(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    counting, metrics = CountingEngine(engine), Metrics(process_metrics=False)
    with observed(metrics, CODES, counting, "TINY", "rid-1", route="POST /classify") as observation:
        call = observation.admit(top_k=1, deadline=99.0)
    assert (counting.admissions, counting.labels) == (1, 0)
    assert call.request_id == "rid-1" and call.deadline == 99.0 and observation.label == "tiny"
    assert count(metrics, "tiny", "200") == 1


async def test_a_refused_request_is_counted_under_the_label_rule(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    counting, metrics = CountingEngine(engine), Metrics(process_metrics=False)
    refused = observed(metrics, CODES, counting, "nope", route="POST /classify")
    with pytest.raises(UnknownModel), refused as observation:
        observation.admit()
    assert counting.labels == 1 and count(metrics, "unknown", "404") == 1
    with observed(metrics, CODES, counting, None, route="POST /v2/repository/index", label="repository"):
        pass
    assert counting.labels == 1 and count(metrics, "repository", "200") == 1
