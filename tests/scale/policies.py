"""The policies `make scale-sim` compares: our HPA as rendered from docker/k8s/base, the same with the
load ratio capped, and CPU at 70 %."""

from __future__ import annotations

from tests.deploy.test_k8s import BASE, by_kind, render
from tests.scale.hpa import HpaSpec, Target

LOAD_METRIC = "effnet_load_ratio"
CPU_TARGET = 70.0  # the policy compared against
# A policy of the load ratio whose per-pod value is capped at this many times its target (the adapter
# rule's clamp_max): past the point where every slot is busy the ratio counts queue, which grows with the
# time waited rather than with the load, so uncapped it can ask for many times the pods a ramp needs.
CLAMPED = "load-ratio-clamped"
CLAMP_TIMES_TARGET = 2.0


def policies(load_target: float) -> dict[str, HpaSpec]:
    """Ours, as rendered from the base, with the load-ratio target calibrated for the simulated pod's
    size (the base's is for its own pods); the same with the ratio capped (CLAMPED); and CPU at 70 %
    with the same bounds and behaviour, so only the signal differs (the base HPA before this change
    scaled on CPU at 70 % alone)."""
    hpa = by_kind(render(BASE))["HorizontalPodAutoscaler"]
    rendered = HpaSpec.parse(hpa)
    targets = tuple(Target(t.metric, load_target) if t.metric == LOAD_METRIC else t for t in rendered.targets)
    ours = HpaSpec(rendered.min_replicas, rendered.max_replicas, targets, rendered.up, rendered.down)
    cpu_only = HpaSpec(ours.min_replicas, ours.max_replicas, (Target("cpu", CPU_TARGET),), ours.up, ours.down)
    return {"load-ratio": ours, CLAMPED: ours, "cpu-70": cpu_only}


def clamp_for(policy: str, target: Target) -> float | None:
    """The cap on one pod's value of `target` under `policy`, if it has one."""
    return target.value * CLAMP_TIMES_TARGET if policy == CLAMPED and target.metric == LOAD_METRIC else None
