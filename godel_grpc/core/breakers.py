"""Per-agent circuit breakers as the dispatcher uses them.

The rules live in `patterns.breaker` (pure, clock passed in); this module keeps one
breaker per agent identity, feeds it results, answers "may this agent take a task now"
for the scheduler, gives `godel_circuit_state` its rows at scrape time, and wakes the
dispatcher when an open breaker's timeout runs out so that trial tasks go out without
anyone polling.
Breakers are liveness, like heartbeats: they live in memory and start CLOSED after a
coordinator restart; their transitions are recorded as events for the audit trail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Counter

from godel_grpc._proto.godel.v1 import agent_pb2, event_pb2
from godel_grpc.core.pattern_host import PatternAction
from godel_grpc.errors import FieldViolation, InvalidArgument
from godel_grpc.patterns.breaker import (
    BreakerConfig,
    BreakerView,
    CircuitBreaker,
    CircuitState,
    Transition,
    TransitionReason,
)

STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}
"""`godel_circuit_state` values."""

_SEED_DEFAULTS = BreakerConfig()
"""Shared by every breaker with the default settings (the config is immutable)."""


def breaker_settings(
    given: agent_pb2.CircuitBreakerConfig | None, path: str = "circuit_breaker"
) -> BreakerConfig:
    """The policy's settings for a `CircuitBreakerConfig` (None: the seed's defaults).

    Field rules (ranges) are checked at the API boundary; this adds the rules that tie
    fields together, for SpawnAgent and the hello alike.

    Raises:
        InvalidArgument: fields that contradict each other, named under `path`.
    """
    if given is None:
        return _SEED_DEFAULTS
    try:
        return BreakerConfig.from_proto(given)
    except ValueError as problems:
        raise InvalidArgument(
            [FieldViolation(path, str(problem)) for problem in str(problems).split("; ")]
        ) from None


def settings_proto(config: BreakerConfig) -> agent_pb2.CircuitBreakerConfig:
    """The effective settings as the API shows them (optional rules off read as 0)."""
    return agent_pb2.CircuitBreakerConfig(
        enabled=config.enabled,
        failure_threshold=config.failure_threshold,
        timeout=config.timeout,
        half_open_requests=config.half_open_requests,
        failure_rate_threshold=config.failure_rate_threshold or 0.0,
        window_size=config.window_size,
        minimum_calls=config.minimum_calls,
        slow_call_seconds=config.slow_call_seconds or 0.0,
        slow_call_rate_threshold=config.slow_call_rate_threshold or 0.0,
    )


class BreakerBook:
    """Every connected agent's breaker."""

    def __init__(
        self,
        transitions: Counter,
        on_probe_due: Callable[[str], None],
        on_transition: Callable[[str, Transition, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._names: dict[str, str] = {}
        self._transitions = transitions
        self._on_probe_due = on_probe_due
        self._on_transition = on_transition
        self._clock = clock
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.held_back = 0
        """Dispatches an open breaker refused, for GetPatternMetrics."""

    def attach(self, agent_id: str, name: str, config: BreakerConfig) -> None:
        """Gives a (re)connected agent its breaker; a reconnect with the same settings
        keeps the breaker it had, so a flapping agent cannot reset its own breaker."""
        current = self._breakers.get(agent_id)
        if current is None or current.config != config:
            self._breakers[agent_id] = CircuitBreaker(config)
        self._names[agent_id] = name

    def detach(self, agent_id: str) -> None:
        """Forgets a departed agent: its metric series goes, so cardinality follows the
        live fleet."""
        self._breakers.pop(agent_id, None)
        timer = self._timers.pop(agent_id, None)
        if timer is not None:
            timer.cancel()
        self._names.pop(agent_id, None)

    def metric_rows(self) -> Iterator[tuple[str, int]]:
        """(agent name, `STATE_VALUES` of its breaker now) of each connected agent.

        Called by the metrics server's thread while the loop may attach and detach
        agents: it works on a copy of the book taken in one step, and only peeks at
        each breaker (a scrape must not move a breaker from OPEN to HALF_OPEN).
        """
        now = self._clock()
        names = self._names
        for agent_id, breaker in list(self._breakers.items()):
            name = names.get(agent_id)
            if name is not None:
                yield name, STATE_VALUES[breaker.peek(now)]

    def allow(self, agent_id: str) -> bool:
        """May a task be leased to this agent now? Takes a trial slot when half-open."""
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            return True
        allowed = breaker.allow(self._clock())
        if not allowed:
            self.held_back += 1
        return allowed

    def release(self, agent_id: str) -> None:
        """Hands back a trial slot whose task will never report (lease lost, cancelled)."""
        breaker = self._breakers.get(agent_id)
        if breaker is not None:
            breaker.release(self._clock())

    def record(self, agent_id: str, success: bool, duration: float) -> list[Transition]:
        """Feeds one attempt's outcome; returns the transitions it caused."""
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            return []
        now = self._clock()
        if success:
            breaker.record_success(now, duration)
        else:
            breaker.record_failure(now)
        if not breaker.has_transitions:
            # Same state as at the last settle, so its probe timer still holds: the
            # common case, one per task result, skips rebuilding the breaker's view.
            return []
        return self._settle(agent_id, breaker)

    def force_open(self, agent_id: str, comment: str = "") -> list[Transition] | None:
        """Holds the agent's breaker open until `reset`; None if it has no breaker."""
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            return None
        breaker.force_open(self._clock())
        return self._settle(agent_id, breaker, comment)

    def reset(self, agent_id: str, comment: str = "") -> list[Transition] | None:
        """Closes the agent's breaker and forgets its recent history; None if it has no
        breaker."""
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            return None
        breaker.reset(self._clock())
        changes = self._settle(agent_id, breaker, comment)
        self._on_probe_due(agent_id)  # it may take tasks again: dispatch now
        return changes

    def view(self, agent_id: str) -> tuple[BreakerView, BreakerConfig] | None:
        """The breaker as of now, and its settings; None if the agent has none."""
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            return None
        return breaker.view(self._clock()), breaker.config

    def to_wall_time(self, monotonic: float) -> float:
        """A time on the breakers' clock as Unix seconds."""
        return time.time() + (monotonic - self._clock())

    def _settle(
        self, agent_id: str, breaker: CircuitBreaker, comment: str = ""
    ) -> list[Transition]:
        changes = breaker.drain_transitions()
        for change in changes:
            self._transitions.labels(change.to_state.value.lower(), change.reason.value).inc()
            self._on_transition(agent_id, change, comment)
        probe_at = breaker.view(self._clock()).next_probe_at
        timer = self._timers.pop(agent_id, None)
        if timer is not None:
            timer.cancel()
        if probe_at is not None:
            delay = max(0.0, probe_at - self._clock())
            self._timers[agent_id] = asyncio.get_running_loop().call_later(
                delay, self._probe_due, agent_id
            )
        return changes

    def _probe_due(self, agent_id: str) -> None:
        self._timers.pop(agent_id, None)
        breaker = self._breakers.get(agent_id)
        if breaker is not None:
            breaker.state(self._clock())  # OPEN turns HALF_OPEN lazily; make it happen
            self._settle(agent_id, breaker)
            self._on_probe_due(agent_id)


class ForcedCircuits:
    """Which agents' breakers an operator holds open, folded from the event log.

    Breakers are liveness and start CLOSED after a restart, but a breaker forced open
    is an operator's decision that must hold until ResetCircuit: this pattern manager
    remembers each forced agent (its last "forced-open" event, kept in snapshots), and
    the coordinator forces the breaker again when the agent connects.
    """

    def __init__(self) -> None:
        self._forced: dict[str, event_pb2.Event] = {}

    def observe(self, event: event_pb2.Event) -> None:
        if not event.HasField("agent_circuit_changed"):
            return
        changed = event.agent_circuit_changed
        if changed.reason == TransitionReason.FORCED_OPEN.value:
            self._forced[changed.agent_id] = event
        elif changed.reason == TransitionReason.RESET.value:
            self._forced.pop(changed.agent_id, None)

    def is_forced(self, agent_id: str) -> bool:
        """Did an operator force this agent's breaker open, with no reset since?"""
        return agent_id in self._forced

    def take_actions(self) -> list[PatternAction]:
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """Nothing to re-derive: the forcing is applied when each agent connects."""

    def history(self) -> list[event_pb2.Event]:
        return list(self._forced.values())
