"""The simulated HPA controller (tests/scale/hpa.py) against the documented algorithm: worked examples
from the Kubernetes docs' "Algorithm details" and "Configurable scaling behavior" sections."""

from __future__ import annotations

import pytest

from tests.deploy.test_k8s import BASE, by_kind, render
from tests.scale.hpa import Controller, HpaSpec, Policy, Rules, Target, proposal, quantity
from tests.scale.policies import CLAMPED, LOAD_METRIC, clamp_for, policies


def spec(up: Rules, down: Rules, low: int = 1, high: int = 100) -> HpaSpec:
    return HpaSpec(low, high, (Target("m", 1.0),), up, down)


NO_LIMIT_UP = Rules(0.0, "Max", (Policy("Percent", 1000, 15.0),))
NO_LIMIT_DOWN = Rules(0.0, "Max", (Policy("Percent", 100, 15.0),))


def test_desired_is_ceil_of_current_times_ratio_outside_the_tolerance() -> None:
    # The docs' example: 200m used for a 100m target doubles the pods; 50m halves them.
    assert proposal([0.2, 0.2], 0, 2, 0.1) == 4
    assert proposal([0.05, 0.05], 0, 2, 0.1) == 1
    assert proposal([1.08, 1.0], 0, 2, 1.0) == 2, "within 10 %: no change"
    assert proposal([1.5, 1.5, 1.5], 0, 3, 1.0) == 5  # ceil(4.5)


def test_pods_not_ready_count_as_idle_when_scaling_up() -> None:
    assert proposal([2.0, 2.0], 2, 4, 1.0) == 4, "with the 2 starting pods at 0 the ratio is 1.0: hold"
    assert proposal([3.0, 3.0], 2, 4, 1.0) == 6
    assert proposal([], 2, 2, 1.0) == 2, "no metrics: hold"


def test_quantities() -> None:
    assert quantity("500m") == 0.5 and quantity("2") == 2.0 and quantity(3) == 3.0


def test_scale_down_takes_the_highest_recommendation_of_the_window() -> None:
    controller = Controller(spec(NO_LIMIT_UP, Rules(60.0, "Max", NO_LIMIT_DOWN.policies)))
    assert controller.decide(0, 10, [10]) == 10
    assert controller.decide(15, 10, [4]) == 10, "10 was recommended 15 s ago"
    assert controller.decide(61, 10, [5]) == 5, "the 10 left the window; 4 and 5 remain"


def test_scale_up_policies_limit_per_period_and_select_max() -> None:
    up = Rules(0.0, "Max", (Policy("Percent", 100, 15.0), Policy("Pods", 4, 15.0)))
    controller = Controller(spec(up, NO_LIMIT_DOWN))
    assert controller.decide(0, 2, [20]) == 6, "max(2 x 2, 2 + 4)"
    assert controller.decide(5, 6, [20]) == 6, "the period's budget is spent (started at 2)"
    assert controller.decide(16, 6, [20]) == 12, "a new period: doubling beats +4"
    min_up = Rules(0.0, "Min", up.policies)
    assert Controller(spec(min_up, NO_LIMIT_DOWN)).decide(0, 10, [40]) == 14, "min(20, 14)"


def test_scale_down_percent_policy_and_bounds() -> None:
    down = Rules(0.0, "Max", (Policy("Percent", 25, 60.0),))
    controller = Controller(spec(NO_LIMIT_UP, down, low=2))
    assert controller.decide(0, 8, [1]) == 6, "a quarter of 8 a minute"
    assert controller.decide(30, 6, [1]) == 6, "within the same minute: nothing more"
    assert controller.decide(61, 6, [1]) == 4, "int(6 x 0.75)"
    assert Controller(spec(NO_LIMIT_UP, NO_LIMIT_DOWN, low=2, high=5)).decide(0, 3, [9]) == 5


@pytest.mark.parametrize("compress", [1.0, 4.0])
def test_the_base_hpa_parses_with_its_behaviour(compress: float) -> None:
    parsed = HpaSpec.parse(by_kind(render(BASE))["HorizontalPodAutoscaler"], compress)
    assert [t.metric for t in parsed.targets] == ["effnet_load_ratio", "cpu"]
    assert parsed.up.window_s == 0 and parsed.down.window_s == 180 / compress
    assert {p.kind for p in parsed.up.policies} == {"Percent", "Pods"}
    assert (parsed.min_replicas, parsed.max_replicas) == (2, 10)


def test_the_clamped_policy_caps_only_its_load_ratio() -> None:
    specs = policies(0.12)
    assert set(specs) == {"load-ratio", CLAMPED, "cpu-70"}
    assert specs[CLAMPED] == specs["load-ratio"], "the same HPA; only the adapter's value is capped"
    ratio = Target(LOAD_METRIC, 0.12)
    assert clamp_for(CLAMPED, ratio) == pytest.approx(0.24)
    assert clamp_for("load-ratio", ratio) is None
    assert clamp_for(CLAMPED, Target("cpu", 90.0)) is None
    # Two saturated pods whose queues read 1.25: uncapped they ask for 21 pods, capped for twice their count.
    assert proposal([1.25, 1.25], 0, 2, 0.12) == 21
    assert proposal([0.24, 0.24], 0, 2, 0.12) == 4
