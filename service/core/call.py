"""`AdmittedCall`: one request after admission, the unit that every protocol hands to the engine.

Admission (admission.py) decides the `Target` once; the call carries it together with what belongs to
the request rather than to the model: its id (for the log lines), its deadline, and the options V2
learns only from the body (`refine`, checked by the same admission that admitted it). Its `label` is
the metrics label: the target's name, so a request is counted under the model that admitted it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from service.core.target import Target
from service.runtime.priorities import Priority

# Admission.refine's shape: the target with the request's late options, checked.
Refiner = Callable[..., Target]


@dataclass(slots=True)
class AdmittedCall:
    target: Target
    request_id: str = ""
    deadline: float | None = None  # time.monotonic(); None: the server's request_timeout_s applies
    _refiner: Refiner | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return self.target.name

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def priority(self) -> Priority:
        return self.target.priority

    def refine(
        self,
        *,
        top_k: int | None = None,
        budget_ms: float | None = None,
        priority: Priority | None = None,
        deadline: float | None = None,
    ) -> AdmittedCall:
        """Take the options a request's body carries (V2): checked against the target; a priority of
        None keeps the admitted one, a deadline only ever shortens the call's."""
        if self._refiner is not None:
            self.target = self._refiner(self.target, top_k=top_k, budget_ms=budget_ms, priority=priority)
        if deadline is not None:
            self.deadline = deadline if self.deadline is None else min(deadline, self.deadline)
        return self
