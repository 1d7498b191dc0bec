"""Merging the processes' metrics: the service's series add up, process series stay apart."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics
from service.split.metrics_merge import merge


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_service_series_add_up_and_process_series_stay_apart() -> None:
    fronts = [Metrics(), Metrics()]
    fronts[0].observe_request("http", "tiny", 200, 0.01)
    fronts[1].observe_request("http", "tiny", 200, 0.02)
    fronts[1].observe_request("http", "tiny", 503, 0.001)
    engine = Metrics()
    engine.batch_completed("tiny", 4, 0.005)
    merged = samples(
        merge([("front-0", fronts[0].render().decode()), ("front-1", fronts[1].render().decode()),
               ("engine", engine.render().decode())])
    )  # fmt: skip
    ok = ("effnet_requests_total", (("code", "200"), ("model", "tiny"), ("protocol", "http")))
    assert merged[ok] == 2.0
    assert merged[("effnet_batch_size_sum", (("model", "tiny"),))] == 4.0
    processes = {dict(labels).get("process") for name, labels in merged if name.startswith("process_")}
    assert processes == {"front-0", "front-1", "engine"}
    assert not any(name.startswith("effnet_") and name.endswith("_created") for name, _ in merged)
