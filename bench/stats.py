"""Summaries of recorded request samples: throughput, latency percentiles, status counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds from the run's start), how long it took, how it ended."""

    start: float
    latency: float
    status: str  # "ok", an HTTP status number, a gRPC code name, or "client_dropped" / "error:..."


def summarize(samples: Sequence[Sample], window: tuple[float, float]) -> dict[str, Any]:
    """Requests *due* within `window` (start, end): ok throughput, latency percentiles in ms of the ok
    ones, and a count per status. Counting by due time keeps slow answers in the open-loop figures."""
    lo, hi = window
    duration = hi - lo
    inside = [s for s in samples if lo <= s.start < hi]
    ok = np.array([s.latency for s in inside if s.status == "ok"], dtype=np.float64) * 1000.0
    summary: dict[str, Any] = {
        "requests": len(inside),
        "ok": int(ok.size),
        "throughput": ok.size / duration if duration > 0 else 0.0,
        "statuses": dict(Counter(s.status for s in inside)),
    }
    for p in PERCENTILES:
        summary[f"p{p}_ms"] = float(np.percentile(ok, p)) if ok.size else None
    summary["mean_ms"] = float(ok.mean()) if ok.size else None
    return summary


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))
