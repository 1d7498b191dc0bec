"""The policies `make scale-sim` compares: our HPA and adapter rule as rendered from docker/k8s (the load
ratio capped at twice its target), the same without the cap (the rule before 2026-12-04), and CPU at
70 %. tests/deploy/test_autoscaling.py checks that the manifests cap at CLAMP_TIMES_TARGET x the target."""

from __future__ import annotations

from tests.deploy.test_k8s import BASE, by_kind, render
from tests.scale.hpa import HpaSpec, Target

LOAD_METRIC = "effnet_load_ratio"
CPU_TARGET = 70.0  # the policy compared against
# Ours: the load ratio with each pod's value capped at this many times its target (the adapter rule's
# clamp_max): past the point where every slot is busy the ratio counts queue, which grows with the time
# waited rather than with the load, so uncapped it can ask for many times the pods a ramp needs.
CLAMPED = "load-ratio-clamped"
CLAMP_TIMES_TARGET = 2.0


def policies(load_target: float) -> dict[str, HpaSpec]:
    """Ours, as rendered from the base, with the load-ratio target calibrated for the simulated pod's
    size (the base's is for its own pods), capped (CLAMPED) and not; and CPU at 70 % with the same
    bounds and behaviour, so only the signal differs (the base HPA before issue 23 scaled on CPU at
    70 % alone). The HPA is the same for both of ours: the cap is the adapter's."""
    hpa = by_kind(render(BASE))["HorizontalPodAutoscaler"]
    rendered = HpaSpec.parse(hpa)
    targets = tuple(Target(t.metric, load_target) if t.metric == LOAD_METRIC else t for t in rendered.targets)
    ours = HpaSpec(rendered.min_replicas, rendered.max_replicas, targets, rendered.up, rendered.down)
    cpu_only = HpaSpec(ours.min_replicas, ours.max_replicas, (Target("cpu", CPU_TARGET),), ours.up, ours.down)
    return {CLAMPED: ours, "load-ratio": ours, "cpu-70": cpu_only}


def clamp_for(policy: str, target: Target) -> float | None:
    """The cap on one pod's value of `target` under `policy`, if it has one."""
    return target.value * CLAMP_TIMES_TARGET if policy == CLAMPED and target.metric == LOAD_METRIC else None
