"""A swarm's autoscaler: how many agents it should run, given its load. Pure policy.

The metric is the swarm's queue depth (tasks waiting plus tasks running); the load is
that metric divided by (target * agents). Above `scale_up_threshold` the swarm should
grow, below `scale_down_threshold` shrink, and in between it holds. When it moves, it
aims for the fewest agents that bring the load to at most the up threshold
(``ceil(metric / (target * up))``), so a swarm that just shrank is not at once loaded
enough to grow again.

Beyond the seed's four numbers, it damps changes the way Kubernetes' HPA does:

* stabilisation windows: every evaluation leaves a recommendation; the swarm grows only
  to the *smallest* recommendation of the last `scale_up_window` seconds and shrinks
  only to the *largest* of the last `scale_down_window` seconds, so a brief dip or
  spike moves nothing;
* rate caps: at most `max_scale_up` agents added (and `max_scale_down` removed) within
  any `scale_period` seconds;
* a cooldown of `cooldown` seconds between two load-driven changes.

`min_agents`..`max_agents` is a hard range: a size outside it (a fresh swarm, agents
lost in a coordinator restart) is corrected at once, without waiting for cooldown or
windows; such "bounds" corrections start no cooldown and use no cap.

Time is passed in (any monotonic-enough clock in seconds), so the policy is tested with
an injected clock. Evaluating changes nothing but the recommendation history; a
decision takes effect when the caller hands it to `note` (live, or while replaying the
recorded decision), so cooldown and caps survive a restart through the event log.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DEFAULT_TARGET = 10.0
DEFAULT_SCALE_UP_THRESHOLD = 0.8
DEFAULT_SCALE_DOWN_THRESHOLD = 0.3
DEFAULT_COOLDOWN = 60.0
DEFAULT_SCALE_DOWN_WINDOW = 300.0
DEFAULT_SCALE_PERIOD = 60.0

LOAD = "load"
"""Trigger of a decision the scale policy took."""
BOUNDS = "bounds"
"""Trigger of a correction into min_agents..max_agents."""


@dataclass(frozen=True, slots=True)
class Violation:
    """A policy that cannot work: the request field at fault and why."""

    path: str
    description: str


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """A swarm's limits and scale policy, zero values already read as defaults."""

    min_agents: int
    max_agents: int
    target: float = DEFAULT_TARGET
    scale_up_threshold: float = DEFAULT_SCALE_UP_THRESHOLD
    scale_down_threshold: float = DEFAULT_SCALE_DOWN_THRESHOLD
    cooldown: float = DEFAULT_COOLDOWN
    scale_up_window: float = 0.0
    scale_down_window: float = DEFAULT_SCALE_DOWN_WINDOW
    max_scale_up: int = 0
    """Agents added per `scale_period` at most; 0 means no cap."""
    max_scale_down: int = 0
    """Agents removed per `scale_period` at most; 0 means no cap."""
    scale_period: float = DEFAULT_SCALE_PERIOD

    @classmethod
    def from_request(
        cls,
        *,
        min_agents: int,
        max_agents: int,
        target: float = 0.0,
        scale_up_threshold: float = 0.0,
        scale_down_threshold: float = 0.0,
        cooldown: float = 0.0,
        scale_up_window: float = 0.0,
        scale_down_window: float = 0.0,
        max_scale_up: int = 0,
        max_scale_down: int = 0,
        scale_period: float = 0.0,
    ) -> ScalePolicy:
        """The policy for a request's numbers, where 0 means the default (as the
        protos say); `max_agents` 0 means equal to `min_agents`."""
        return cls(
            min_agents=min_agents,
            max_agents=max_agents or min_agents,
            target=target or DEFAULT_TARGET,
            scale_up_threshold=scale_up_threshold or DEFAULT_SCALE_UP_THRESHOLD,
            scale_down_threshold=scale_down_threshold or DEFAULT_SCALE_DOWN_THRESHOLD,
            cooldown=cooldown or DEFAULT_COOLDOWN,
            scale_up_window=scale_up_window,
            scale_down_window=scale_down_window or DEFAULT_SCALE_DOWN_WINDOW,
            max_scale_up=max_scale_up,
            max_scale_down=max_scale_down,
            scale_period=scale_period or DEFAULT_SCALE_PERIOD,
        )

    def violations(self) -> list[Violation]:
        """What makes the policy unworkable (request field paths in JSON names)."""
        found: list[Violation] = []
        if self.max_agents < self.min_agents:
            found.append(
                Violation(
                    "maxAgents",
                    f"must be at least minAgents ({self.min_agents}), got {self.max_agents}",
                )
            )
        if self.max_agents < 1:
            found.append(Violation("maxAgents", "a swarm needs room for at least one agent"))
        if self.scale_down_threshold >= self.scale_up_threshold:
            found.append(
                Violation(
                    "scalePolicy.scaleDownThreshold",
                    f"must be below scaleUpThreshold ({self.scale_up_threshold}), "
                    f"got {self.scale_down_threshold}",
                )
            )
        return found

    def clamp(self, agents: int) -> int:
        """`agents` brought into min_agents..max_agents."""
        return max(self.min_agents, min(self.max_agents, agents))


@dataclass(frozen=True, slots=True)
class Observation:
    """The swarm as measured at one evaluation."""

    queued: int
    """Its tasks waiting for an agent."""
    in_flight: int
    """Its tasks leased to agents and not finished."""
    agents: int
    """Its agents that take work (started or starting, not draining)."""

    @property
    def metric(self) -> int:
        """The queue_depth metric: waiting plus running tasks."""
        return self.queued + self.in_flight


@dataclass(frozen=True, slots=True)
class Decision:
    """A new size for the swarm and everything that led to it."""

    time: float
    from_agents: int
    to_agents: int
    recommended: int
    """What the load alone asked for, before windows and caps."""
    observation: Observation
    load: float
    trigger: str
    """`LOAD` or `BOUNDS`."""
    reason: str

    @property
    def direction(self) -> str:
        """ "up" or "down"."""
        return "up" if self.to_agents > self.from_agents else "down"


def load_of(policy: ScalePolicy, metric: float, agents: int) -> float:
    """Metric per (target * agents); with no agents, infinite for any work and 0 for
    none."""
    if agents <= 0:
        return math.inf if metric > 0 else 0.0
    return metric / (policy.target * agents)


def recommendation(policy: ScalePolicy, observation: Observation) -> int:
    """The size the current load asks for, within the swarm's bounds."""
    agents = observation.agents
    load = load_of(policy, observation.metric, agents)
    if policy.scale_down_threshold <= load <= policy.scale_up_threshold:
        wanted = agents
    else:
        wanted = math.ceil(observation.metric / (policy.target * policy.scale_up_threshold))
    return policy.clamp(wanted)


class Autoscaler:
    """One swarm's scaling state: recent recommendations, recent changes, last change."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._recommendations: deque[tuple[float, int]] = deque()
        self._changes: deque[tuple[float, int]] = deque()
        """(time, agents added (+) or removed (-)) of load-driven changes."""
        self.last_change: float | None = None
        """Time of the last load-driven change, for the cooldown."""

    def evaluate(self, now: float, observation: Observation) -> Decision | None:
        """Whether the swarm should change size now, and to what.

        Records this evaluation's recommendation (for the windows); otherwise changes
        nothing until the decision is handed to `note`.
        """
        policy = self.policy
        agents = observation.agents
        load = load_of(policy, observation.metric, agents)
        recommended = recommendation(policy, observation)
        self._remember(now, recommended)
        if agents != policy.clamp(agents):
            target = policy.clamp(agents)
            bound = "minAgents" if agents < policy.min_agents else "maxAgents"
            limit = policy.min_agents if agents < policy.min_agents else policy.max_agents
            return Decision(
                now,
                agents,
                target,
                recommended,
                observation,
                _finite(load),
                BOUNDS,
                f"{agents} agents is outside {bound} {limit}: {agents} -> {target}",
            )
        if self.last_change is not None and now - self.last_change < policy.cooldown:
            return None
        up = min(r for t, r in self._recommendations if t >= now - policy.scale_up_window)
        down = max(r for t, r in self._recommendations if t >= now - policy.scale_down_window)
        wanted = agents
        if wanted < up:
            wanted = up
        elif wanted > down:
            wanted = down
        if wanted == agents:
            return None
        capped = self._cap(now, agents, wanted)
        if capped == agents:
            return None
        return Decision(
            now,
            agents,
            capped,
            recommended,
            observation,
            _finite(load),
            LOAD,
            self._reason(observation, load, agents, wanted, capped),
        )

    def note(self, time: float, from_agents: int, to_agents: int, trigger: str) -> None:
        """A decision took effect (live, or replayed from the log): load-driven ones
        start the cooldown and count against the caps."""
        if trigger != LOAD or to_agents == from_agents:
            return
        self._changes.append((time, to_agents - from_agents))
        if self.last_change is None or time > self.last_change:
            self.last_change = time

    def _remember(self, now: float, recommended: int) -> None:
        self._recommendations.append((now, recommended))
        keep = max(self.policy.scale_up_window, self.policy.scale_down_window)
        while self._recommendations and self._recommendations[0][0] < now - keep:
            self._recommendations.popleft()
        while self._changes and self._changes[0][0] <= now - self.policy.scale_period:
            self._changes.popleft()

    def _cap(self, now: float, agents: int, wanted: int) -> int:
        policy = self.policy
        since = now - policy.scale_period
        if wanted > agents and policy.max_scale_up:
            added = sum(d for t, d in self._changes if t > since and d > 0)
            return min(wanted, agents + max(0, policy.max_scale_up - added))
        if wanted < agents and policy.max_scale_down:
            removed = -sum(d for t, d in self._changes if t > since and d < 0)
            return max(wanted, agents - max(0, policy.max_scale_down - removed))
        return wanted

    def _reason(
        self, observation: Observation, load: float, agents: int, wanted: int, capped: int
    ) -> str:
        policy = self.policy
        if capped > agents:
            side = f"above scaleUpThreshold {policy.scale_up_threshold:g}"
            window = policy.scale_up_window
        else:
            side = f"below scaleDownThreshold {policy.scale_down_threshold:g}"
            window = policy.scale_down_window
        text = (
            f"queue depth {observation.metric} ({observation.queued} queued, "
            f"{observation.in_flight} in flight) is load {_finite(load):.2f} of {agents} "
            f"agents * target {policy.target:g}, {side}"
        )
        if window:
            text += f" for {window:g}s"
        text += f": {agents} -> {capped}"
        if capped != wanted:
            text += f" (capped from {wanted} per {policy.scale_period:g}s)"
        return text


def _finite(load: float) -> float:
    """A load fit for an event: with no agents there is no load to speak of (the
    metric itself says how much work waits), so infinity is shown as 0."""
    return load if math.isfinite(load) else 0.0
