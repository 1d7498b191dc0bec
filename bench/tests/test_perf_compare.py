"""The perf_analyzer bench's own arithmetic: sweeps, medians over repeats, the table."""

from __future__ import annotations

from bench import perf_analyzer, perf_compare


def test_sweeps_run_evenly_spaced_levels_at_once_and_others_one_by_one() -> None:
    assert perf_analyzer._sweeps((1, 2, 3)) == [(1, 2, 3)]
    assert perf_analyzer._range((1, 2, 3)) == "1:3:1"
    assert perf_analyzer._sweeps((1, 4, 16)) == [(1,), (4,), (16,)]
    assert perf_analyzer._range((4,)) == "4:4"


def test_medians_over_repeats_skip_missing_figures() -> None:
    runs = [
        {"throughput": 10.0, "p50_ms": 5.0, "server_mean_batch": None},
        {"throughput": 30.0, "p50_ms": 7.0, "server_mean_batch": 2.0},
        {"throughput": 20.0, "p50_ms": 9.0, "server_mean_batch": None},
    ]
    assert perf_compare._median(runs) == {"throughput": 20.0, "p50_ms": 7.0, "server_mean_batch": 2.0}


def test_the_table_has_a_row_per_concurrency() -> None:
    figures = {"throughput": 50.0, "p50_ms": 20.0, "p99_ms": 40.0, "server_mean_batch": 1.5}
    document = {
        "rows": [
            {"concurrency": c, "loadgen": figures, "perf_analyzer": figures, "throughput_ratio": 1.0}
            for c in perf_compare.CONCURRENCY
        ]
    }
    lines = perf_compare.table(document).splitlines()
    assert len(lines) == 2 + len(perf_compare.CONCURRENCY)
    assert lines[2].startswith("| 1 | 50.0 | 20.0 / 40.0 | 1.5 |")
