"""One `/metrics` for every process of split mode: each process renders its own registry; the texts
are merged here. The service's own series (`effnet_*`) of the same name and labels are summed across
processes (requests counted by two fronts are one counter; the engine alone has batches and queues);
every other series (process_*, python_*) keeps each process apart with a `process` label."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SERVICE_PREFIX = "effnet_"


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge(texts: Iterable[tuple[str, str]]) -> bytes:
    """`texts`: (process name, its exposition text) -> one exposition text."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for process, text in texts:
        for family in text_string_to_metric_families(text):
            shared = family.name.startswith(SERVICE_PREFIX)
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                if shared and sample.name.endswith("_created"):
                    continue  # creation times do not add up
                labels = dict(sample.labels)
                if not shared:
                    labels["process"] = process
                key = (sample.name, tuple(sorted(labels.items())))
                series[key] = series.get(key, 0.0) + sample.value if shared else sample.value
    for name, family in families.items():
        for (sample_name, label_pairs), value in values[name].items():
            family.add_sample(sample_name, dict(label_pairs), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
