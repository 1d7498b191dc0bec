"""Query and header parameters that several HTTP routes take, declared once (FastAPI Annotated types)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

from service.runtime.priorities import NAMES as PRIORITY_NAMES
from service.runtime.priorities import Priority, parse_priority

Variant = Annotated[
    str | None,
    Query(
        max_length=64,
        description="model name (b0..b7, lite0, ...), a cascade, or 'auto'; default model if omitted",
    ),
]
Version = Annotated[int | None, Query(ge=1, description="model version; default: the newest ready version")]
TimeoutMs = Annotated[
    int | None, Query(ge=1, le=600_000, description="deadline for this request in milliseconds")
]
BudgetMs = Annotated[
    float | None, Query(gt=0, le=600_000, description="variant=auto: the latency budget in milliseconds")
]
PriorityQuery = Annotated[
    str | None,
    Query(
        max_length=16,
        description=f"{PRIORITY_NAMES} (default normal): higher levels are batched first; "
        "overrides the X-Priority header",
    ),
]
PriorityHeader = Annotated[str | None, Header(max_length=16, description="the priority, as a header")]


def deadline_after(start: float, timeout_ms: int | None) -> float | None:
    """The request's deadline (time.monotonic()) from its `timeout_ms`, counted from `start`."""
    return start + timeout_ms / 1000 if timeout_ms is not None else None


def request_priority(query: str | None, header: str | None) -> Priority:
    """The request's priority: the query parameter, else the X-Priority header, else normal."""
    return parse_priority(query if query is not None else header)
