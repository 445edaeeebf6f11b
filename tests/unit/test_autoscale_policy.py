"""The swarm autoscaler's policy, driven by an injected clock.

Given a policy and a sequence of observations at chosen times, when the autoscaler
evaluates each one (and every decision takes effect, as the coordinator does), then the
sizes stay in bounds and respect cooldown, caps and stabilisation windows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.autoscale import (
    BOUNDS,
    LOAD,
    Autoscaler,
    Decision,
    Observation,
    ScalePolicy,
    recommendation,
)


@dataclass
class Run:
    """Replays observations through an autoscaler, applying each decision."""

    scaler: Autoscaler
    agents: int
    decisions: list[Decision]

    def step(self, now: float, queued: int, in_flight: int = 0) -> Decision | None:
        decision = self.scaler.evaluate(now, Observation(queued, in_flight, self.agents))
        if decision is not None:
            self.scaler.note(now, decision.from_agents, decision.to_agents, decision.trigger)
            self.agents = decision.to_agents
            self.decisions.append(decision)
        return decision


def run(policy: ScalePolicy, agents: int) -> Run:
    return Run(Autoscaler(policy), agents, [])


SEED = ScalePolicy.from_request(
    min_agents=2, max_agents=20, target=10, scale_up_threshold=0.8, scale_down_threshold=0.3
)


def test_zero_values_mean_the_documented_defaults() -> None:
    policy = ScalePolicy.from_request(min_agents=3, max_agents=0)
    assert policy.max_agents == 3
    assert (policy.target, policy.scale_up_threshold, policy.scale_down_threshold) == (
        10.0,
        0.8,
        0.3,
    )
    assert (policy.cooldown, policy.scale_down_window, policy.scale_period) == (60, 300, 60)
    assert policy.scale_up_window == 0 and policy.max_scale_up == 0


def test_unworkable_policies_name_the_field() -> None:
    bad = ScalePolicy.from_request(
        min_agents=5, max_agents=2, scale_up_threshold=0.3, scale_down_threshold=0.5
    )
    assert {v.path for v in bad.violations()} == {"maxAgents", "scalePolicy.scaleDownThreshold"}
    assert SEED.violations() == []


def test_a_fresh_swarm_is_brought_to_min_at_once_without_a_cooldown() -> None:
    given_run = run(SEED, agents=0)
    decision = given_run.step(0.0, queued=0)
    assert decision is not None
    assert (decision.from_agents, decision.to_agents, decision.trigger) == (0, 2, BOUNDS)
    assert given_run.scaler.last_change is None


def test_load_above_the_up_threshold_grows_to_bring_load_under_it() -> None:
    given_run = run(SEED, agents=2)
    decision = given_run.step(0.0, queued=50, in_flight=2)
    assert decision is not None and decision.trigger == LOAD
    # 52 tasks at 10 per agent and 0.8 at most: ceil(52 / 8) = 7 agents.
    assert decision.to_agents == 7
    assert decision.observation.metric == 52
    assert decision.load == 52 / 20
    assert "queue depth 52 (50 queued, 2 in flight)" in decision.reason


def test_load_between_the_thresholds_holds() -> None:
    given_run = run(SEED, agents=4)
    assert given_run.step(0.0, queued=20) is None  # load 0.5


def test_growth_is_capped_at_max_agents() -> None:
    given_run = run(SEED, agents=2)
    decision = given_run.step(0.0, queued=10_000)
    assert decision is not None and decision.to_agents == 20


def test_cooldown_holds_the_next_change() -> None:
    policy = ScalePolicy.from_request(min_agents=1, max_agents=50, cooldown=30, scale_down_window=1)
    given_run = run(policy, agents=1)
    assert given_run.step(0.0, queued=40) is not None
    assert given_run.step(10.0, queued=400) is None
    assert given_run.step(29.9, queued=400) is None
    later = given_run.step(30.0, queued=400)
    assert later is not None and later.to_agents == 50


def test_scale_down_waits_out_its_stabilisation_window() -> None:
    policy = ScalePolicy.from_request(min_agents=2, max_agents=10, cooldown=1, scale_down_window=60)
    given_run = run(policy, agents=10)
    given_run.step(0.0, queued=80)  # load 0.8: hold, recommendation 10
    assert given_run.step(30.0, queued=0) is None  # 10 was still wanted 30 s ago
    assert given_run.step(59.0, queued=0) is None
    decision = given_run.step(61.0, queued=0)
    assert decision is not None and decision.to_agents == 2
    assert "for 60s" in decision.reason


def test_scale_up_window_needs_sustained_load() -> None:
    policy = ScalePolicy.from_request(min_agents=1, max_agents=10, cooldown=1, scale_up_window=20)
    given_run = run(policy, agents=1)
    given_run.step(0.0, queued=5)  # load 0.5: holds at 1
    assert given_run.step(10.0, queued=100) is None  # a spike, not yet 20 s long
    decision = given_run.step(21.0, queued=100)
    assert decision is not None and decision.to_agents == 10


def test_rate_caps_limit_agents_added_per_period() -> None:
    policy = ScalePolicy.from_request(
        min_agents=1, max_agents=100, cooldown=1, max_scale_up=4, scale_period=60
    )
    given_run = run(policy, agents=1)
    first = given_run.step(0.0, queued=1000)
    assert first is not None and first.to_agents == 5
    assert "capped from 100" in first.reason
    assert given_run.step(30.0, queued=1000) is None  # 4 already added this period
    second = given_run.step(61.0, queued=1000)
    assert second is not None and second.to_agents == 9


def test_note_replayed_from_the_log_restores_the_cooldown() -> None:
    scaler = Autoscaler(ScalePolicy.from_request(min_agents=1, max_agents=10, cooldown=60))
    scaler.note(100.0, 1, 5, LOAD)
    assert scaler.evaluate(130.0, Observation(1000, 0, 5)) is None
    assert scaler.evaluate(161.0, Observation(1000, 0, 5)) is not None


policies = st.builds(
    lambda lo, extra, target, up, gap, cooldown, up_w, down_w, cap_up, cap_down, period: (
        ScalePolicy.from_request(
            min_agents=lo,
            max_agents=lo + extra,
            target=target,
            scale_up_threshold=up,
            scale_down_threshold=up * gap,
            cooldown=cooldown,
            scale_up_window=up_w,
            scale_down_window=down_w,
            max_scale_up=cap_up,
            max_scale_down=cap_down,
            scale_period=period,
        )
    ),
    st.integers(0, 5),
    st.integers(1, 20),
    st.floats(1, 50),
    st.floats(0.2, 1.0),
    st.floats(0.05, 0.9),
    st.floats(0.5, 30),
    st.sampled_from([0.0, 5.0, 20.0]),
    st.sampled_from([1.0, 10.0, 60.0]),
    st.integers(0, 5),
    st.integers(0, 5),
    st.floats(5, 60),
)
timelines = st.lists(
    st.tuples(st.floats(0.01, 20), st.integers(0, 2000), st.integers(0, 50)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, start=st.integers(0, 30), timeline=timelines)
def test_properties_bounds_cooldown_caps_and_windows(
    policy: ScalePolicy, start: int, timeline: list[tuple[float, int, int]]
) -> None:
    given_run = run(policy, agents=start)
    now = 0.0
    recommendations: list[tuple[float, int]] = []
    for gap, queued, in_flight in timeline:
        now += gap
        before = given_run.agents
        recommendations.append(
            (now, recommendation(policy, Observation(queued, in_flight, before)))
        )
        decision = given_run.step(now, queued, in_flight)
        if decision is None:
            continue
        # Never outside [min, max] once a decision is taken.
        assert policy.min_agents <= decision.to_agents <= policy.max_agents
        if decision.trigger == BOUNDS:
            continue
        # A load decision needs the size in bounds first, and moves the right way.
        assert policy.min_agents <= before <= policy.max_agents
        # Stabilisation: growth never beyond any recommendation of the up window,
        # shrinking never below any of the down window.
        if decision.to_agents > before:
            window = [r for t, r in recommendations if t >= now - policy.scale_up_window]
            assert decision.to_agents <= min(window)
        else:
            window = [r for t, r in recommendations if t >= now - policy.scale_down_window]
            assert decision.to_agents >= max(window)
    loads = [d for d in given_run.decisions if d.trigger == LOAD]
    # Cooldown between load-driven changes.
    for earlier, later in itertools.pairwise(loads):
        assert later.time - earlier.time >= policy.cooldown
    # Caps: within any period, added (removed) agents stay within the cap.
    for decision in loads:
        since = [d for d in loads if decision.time - policy.scale_period < d.time <= decision.time]
        added = sum(max(0, d.to_agents - d.from_agents) for d in since)
        removed = sum(max(0, d.from_agents - d.to_agents) for d in since)
        if policy.max_scale_up:
            assert added <= policy.max_scale_up
        if policy.max_scale_down:
            assert removed <= policy.max_scale_down
