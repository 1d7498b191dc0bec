"""Kubernetes' HorizontalPodAutoscaler algorithm (autoscaling/v2), as documented and as its controller
(pkg/controller/podautoscaler) applies it, driven by the HPA spec rendered from our own manifests.

Per metric: usage ratio = mean over ready pods / target; within the tolerance (0.1) nothing changes,
else desired = ceil(ratio x ready pods). Pods not yet ready count as using nothing when scaling up
(and if that turns the direction round or lands within the tolerance, nothing changes). Several
metrics: the largest proposal. Then the behaviour: the stabilisation windows (scale up to the lowest,
down to the highest recommendation of the window) and the policies (Pods / Percent per period,
selectPolicy Max or Min, counted from the scale events inside each policy's period), clamped to
[minReplicas, maxReplicas]. Times are divided by `compress` so a ramp runs in a few minutes.

Left out: the CPU initialisation period (metrics of pods younger than 5 min that were not ready), and
missing metrics of ready pods (every ready pod here answers its scrape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 0.1
SYNC_PERIOD_S = 15.0
# The documented defaults of `behavior` (kubectl explain hpa.spec.behavior).
DEFAULT_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
    {"type": "Percent", "value": 100, "periodSeconds": 15}, {"type": "Pods", "value": 4, "periodSeconds": 15},
]}  # fmt: skip
DEFAULT_DOWN = {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
    {"type": "Percent", "value": 100, "periodSeconds": 15},
]}  # fmt: skip


@dataclass(frozen=True)
class Policy:
    kind: str  # Pods | Percent
    value: int
    period_s: float


@dataclass(frozen=True)
class Rules:
    window_s: float
    select: str  # Max | Min | Disabled
    policies: tuple[Policy, ...]

    @classmethod
    def parse(cls, spec: dict[str, Any] | None, default: dict[str, Any], compress: float) -> Rules:
        merged = {**default, **(spec or {})}
        return cls(
            window_s=merged["stabilizationWindowSeconds"] / compress,
            select=merged.get("selectPolicy", "Max"),
            policies=tuple(
                Policy(p["type"], int(p["value"]), p["periodSeconds"] / compress) for p in merged["policies"]
            ),
        )


@dataclass(frozen=True)
class Target:
    """One entry of spec.metrics: `metric` is `cpu` (Resource, Utilization in %) or a Pods metric's
    name (AverageValue, a quantity)."""

    metric: str
    value: float


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number ("700m" -> 0.7, "2" -> 2.0)."""
    if isinstance(text, int | float):
        return float(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(frozen=True)
class HpaSpec:
    min_replicas: int
    max_replicas: int
    targets: tuple[Target, ...]
    up: Rules
    down: Rules

    @classmethod
    def parse(cls, hpa: dict[str, Any], compress: float = 1.0) -> HpaSpec:
        spec = hpa["spec"]
        targets = []
        for metric in spec["metrics"]:
            if metric["type"] == "Resource":
                resource = metric["resource"]
                targets.append(Target(resource["name"], float(resource["target"]["averageUtilization"])))
            elif metric["type"] == "Pods":
                pods = metric["pods"]
                targets.append(Target(pods["metric"]["name"], quantity(pods["target"]["averageValue"])))
            else:
                raise ValueError(f"metric type {metric['type']} is not simulated")
        behavior = spec.get("behavior", {})
        return cls(
            min_replicas=int(spec.get("minReplicas", 1)),
            max_replicas=int(spec["maxReplicas"]),
            targets=tuple(targets),
            up=Rules.parse(behavior.get("scaleUp"), DEFAULT_UP, compress),
            down=Rules.parse(behavior.get("scaleDown"), DEFAULT_DOWN, compress),
        )


def proposal(values: list[float], unready: int, current: int, target: float) -> int:
    """Replicas one metric asks for, from the values of the ready pods (replica_calculator.go)."""
    if not values:
        return current
    ratio = sum(values) / len(values) / target
    if abs(ratio - 1.0) <= TOLERANCE:
        return current
    if ratio > 1.0 and unready:
        widened = sum(values) / (target * (len(values) + unready))
        if abs(widened - 1.0) <= TOLERANCE or widened < 1.0:
            return current
        return math.ceil(widened * (len(values) + unready))
    return math.ceil(ratio * len(values))


@dataclass
class Controller:
    spec: HpaSpec
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas added; < 0 removed)

    def decide(self, now: float, current: int, proposals: list[int]) -> int:
        """The replica count after one sync, given each metric's proposal."""
        spec = self.spec
        raw = max(proposals) if proposals else current
        self.recommendations.append((now, raw))
        horizon = max(spec.up.window_s, spec.down.window_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if now - t <= horizon]
        up = min(r for t, r in self.recommendations if now - t <= spec.up.window_s)
        down = max(r for t, r in self.recommendations if now - t <= spec.down.window_s)
        stabilized = current
        if stabilized < up:
            stabilized = up
        if stabilized > down:
            stabilized = down
        desired = stabilized
        if stabilized > current:
            desired = min(stabilized, self._up_limit(now, current), spec.max_replicas)
        elif stabilized < current:
            desired = max(stabilized, self._down_limit(now, current), spec.min_replicas)
        desired = min(max(desired, spec.min_replicas), spec.max_replicas)
        if desired != current:
            self.events.append((now, desired - current))
        return desired

    def _changed_within(self, now: float, period_s: float, sign: int) -> int:
        return sum(d for t, d in self.events if now - t < period_s and d * sign > 0)

    def _up_limit(self, now: float, current: int) -> int:
        rules = self.spec.up
        if rules.select == "Disabled":
            return current
        limits = []
        for policy in rules.policies:
            start = current - self._changed_within(now, policy.period_s, +1)
            if policy.kind == "Pods":
                limits.append(start + policy.value)
            else:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
        return max(limits) if rules.select == "Max" else min(limits)

    def _down_limit(self, now: float, current: int) -> int:
        rules = self.spec.down
        if rules.select == "Disabled":
            return current
        limits = []
        for policy in rules.policies:
            start = current - self._changed_within(now, policy.period_s, -1)  # removals are negative
            if policy.kind == "Pods":
                limits.append(start - policy.value)
            else:
                limits.append(int(start * (1 - policy.value / 100)))
        return min(limits) if rules.select == "Max" else max(limits)
