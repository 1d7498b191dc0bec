"""bench/explain.py's graph measurement on the tiny real graph: every case runs, on both graphs."""

from __future__ import annotations

from pathlib import Path

from bench.explain import GRAPH_CASES, graph_cost
from tests.tiny_model import SIZE, write_model


def test_graph_cost_measures_every_case_against_the_plain_graph(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny", explain=True)
    result = graph_cost(folder / "model.onnx", SIZE, budget_s=0.05, batch_sizes=(1, 2))
    assert set(result) == {"1", "2"}
    for cases in result.values():
        assert list(cases) == list(GRAPH_CASES)
        assert cases["plain graph"]["vs_plain_cpu"] == 1.0
        assert all(case["ms_per_batch"] > 0 and case["runs"] >= 3 for case in cases.values())
