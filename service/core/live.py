"""Live figures per model: what its requests really took lately. The executor writes them after each
run (cascade stages included); the router reads them to predict latencies for `auto`."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

_EWMA_ALPHA = 0.2
# Near saturation queueing outgrows any average, so a prediction is never below the slow end (90th
# percentile) of what requests really took in the last few seconds.
_RECENT_S = 2.0
_RECENT_MIN_SAMPLES = 5
_RECENT_QUANTILE = 0.9
_WINDOW = 256


class LiveFigures:
    def __init__(self) -> None:
        self._preprocess_ms: dict[str, float] = {}
        self._recent: dict[str, deque[tuple[float, float]]] = {}

    def observe_latency(self, model: str, seconds: float) -> None:
        """A request to `model` took `seconds` in the executor (preprocess, queue, inference)."""
        window = self._recent.setdefault(model, deque(maxlen=_WINDOW))
        window.append((time.monotonic(), seconds * 1000))

    def observe_preprocess(self, model: str, seconds_per_image: float) -> None:
        ms = seconds_per_image * 1000
        previous = self._preprocess_ms.get(model)
        self._preprocess_ms[model] = ms if previous is None else previous + _EWMA_ALPHA * (ms - previous)

    def preprocess_ms(self, model: str) -> float | None:
        """Moving average of preprocessing per image (None before the first request)."""
        return self._preprocess_ms.get(model)

    def recent_tail_ms(self, model: str, min_samples: int = _RECENT_MIN_SAMPLES) -> float | None:
        """The 90th percentile of the last few seconds' latencies; None with fewer than `min_samples`."""
        window = self._recent.get(model)
        if not window:
            return None
        now = time.monotonic()
        recent = [ms for at, ms in window if now - at <= _RECENT_S]
        if len(recent) < min_samples:
            return None
        return float(np.quantile(recent, _RECENT_QUANTILE))
