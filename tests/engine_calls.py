"""Requests made to an engine directly, as a protocol layer makes them: admit once, then run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.engine import Engine
from service.core.outcomes import ClassifyOutcome, InferOutcome


async def classify(
    engine: Engine,
    model: str | None,
    images: Sequence[bytes],
    top_k: int = 1,
    deadline: float | None = None,
    version: int | None = None,
    budget_ms: float | None = None,
) -> ClassifyOutcome:
    call = engine.admit(model, version, top_k=top_k, budget_ms=budget_ms, deadline=deadline)
    return await engine.classify(call, images)


async def infer_pixels(
    engine: Engine, model: str, pixels: np.ndarray, deadline: float | None = None, version: int | None = None
) -> InferOutcome:
    return await engine.infer_pixels(engine.admit(model, version, deadline=deadline), pixels)
