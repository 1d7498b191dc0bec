"""`Target`: one admitted request. Admission (admission.py) decides it once, whatever the protocol;
everything after it takes the target and never resolves a name again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.lifecycle.records import ModelRecord
from service.model_spec import ModelSpec
from service.runtime.priorities import DEFAULT, Priority

AUTO = "auto"
Kind = Literal["model", "cascade", "auto"]


@dataclass(frozen=True, slots=True)
class Target:
    """What serves a request and with which options.

    `name` is the served name (a model after the precision choice, a cascade, or `auto`) and the
    request's metrics label. `record` is the model or cascade (None for `auto`, which chooses per
    request). `spec` describes what the answer will look like (classes, crop size) where one model
    does; `top_k` and `budget_ms` are the checked options (`budget_ms` only for `auto`); `priority`
    orders its images in the batch queues (service/runtime/priorities.py).
    """

    name: str
    kind: Kind
    record: ModelRecord | None
    version: int | None = None
    spec: ModelSpec | None = None
    top_k: int | None = None
    budget_ms: float | None = None
    priority: Priority = DEFAULT

    @property
    def routed(self) -> bool:
        """Served by the router (`auto`, cascades), not by one model directly."""
        return self.kind != "model"
