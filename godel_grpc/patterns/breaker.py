"""Circuit breaker policy for dispatch to one agent, with the clock passed in.

Why not aiobreaker directly: its CircuitBreaker reads the wall clock and wraps the
protected call, while the dispatcher never calls an agent (it leases tasks whose
results arrive later on a stream), so this module is the same state machine as plain
code with ``now`` injected. Its state names and its two core knobs keep aiobreaker's
meaning: `failure_threshold` is ``fail_max`` (consecutive failures that open it, 5 by
default in both) and `timeout` is ``timeout_duration`` (how long it stays open; the
seed's 30 s instead of aiobreaker's 60 s).

The states:

- CLOSED: every dispatch is allowed; `failure_threshold` consecutive failures open it.
  Optionally, like Resilience4j, a failure rate of at least `failure_rate_threshold`
  over the last `window_size` results (once `minimum_calls` are in) opens it too, and
  a success slower than `slow_call_seconds` counts as a failure; or, with
  `slow_call_rate_threshold`, slow calls are judged by their own rate over the
  window instead (Resilience4j's slow-call rate), a slow success staying a success.
- OPEN: nothing is dispatched. Once `timeout` seconds have passed since it opened it
  becomes HALF_OPEN, lazily, the next time any method is called with a later ``now``.
- HALF_OPEN: up to `half_open_requests` trial dispatches are allowed in total until
  they report. All of them succeeding closes it; one failure reopens it, restarting
  the timeout. A slow trial reopens it too: a trial must succeed in time. A trial slot
  whose task never reports (dispatch aborted, lease lost,
  cancelled) must be handed back with `release`, or the breaker waits for it.

`force_open` holds it OPEN with no probing until `reset`, as Polly's Isolate and
Resilience4j's FORCED_OPEN do; `reset` closes it and forgets its recent history.
Every change of state is queued as a `Transition` for `drain_transitions`, which the
service turns into events and metrics.

Use one monotonic clock for every ``now`` (the event loop's time); the view's
`opened_at` and `next_probe_at` are on that clock, so the service converts them to
wall time for `GetCircuitStateResponse`.
"""

from __future__ import annotations

import enum
import inspect
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_HALF_OPEN_REQUESTS",
    "DEFAULT_MINIMUM_CALLS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW_SIZE",
    "BreakerConfig",
    "BreakerView",
    "CircuitBreaker",
    "CircuitState",
    "Transition",
    "TransitionReason",
]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_TIMEOUT = 30.0
DEFAULT_HALF_OPEN_REQUESTS = 3
DEFAULT_WINDOW_SIZE = 100
DEFAULT_MINIMUM_CALLS = 10


class CircuitState(enum.Enum):
    """Position of the breaker. Names match aiobreaker's and `GetCircuitStateResponse.State`."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class TransitionReason(enum.Enum):
    """Why the breaker moved; the value is meant for events, logs and metric labels."""

    CONSECUTIVE_FAILURES = "consecutive-failures"
    FAILURE_RATE = "failure-rate"
    SLOW_CALL_RATE = "slow-call-rate"
    TIMEOUT_ELAPSED = "timeout-elapsed"
    TRIAL_FAILED = "trial-failed"
    TRIAL_SLOW = "trial-slow"
    TRIALS_SUCCEEDED = "trials-succeeded"
    FORCED_OPEN = "forced-open"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state.

    Attributes:
        from_state: before.
        to_state: after. OPEN to OPEN happens once: when an open breaker is forced.
        at: when, on the caller's clock. For OPEN to HALF_OPEN it is the moment the
            timeout ran out, which may be earlier than the call that noticed it.
        reason: the rule that fired.
    """

    from_state: CircuitState
    to_state: CircuitState
    at: float
    reason: TransitionReason


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A breaker's settings; the defaults are the seed's.

    Attributes:
        enabled: False keeps it CLOSED whatever happens (results are still counted;
            `force_open` and `reset` still work, being explicit operator actions).
        failure_threshold: consecutive failures that open it.
        timeout: seconds it stays OPEN before trials.
        half_open_requests: trial dispatches in HALF_OPEN; all must succeed to close.
        failure_rate_threshold: fraction of failures over the window that opens it, in
            (0, 1]; None turns the rate rule off.
        window_size: results (most recent) the rate is taken over.
        minimum_calls: results the window needs before the rate can open it, so two
            early failures out of two do not read as 100%.
        slow_call_seconds: a success slower than this is a slow call; None turns
            the rule off. A slow call counts as a failure unless
            `slow_call_rate_threshold` is set.
        slow_call_rate_threshold: fraction of slow calls over the window that opens
            it, in (0, 1]; None makes every slow call a failure instead.
    """

    enabled: bool = True
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    timeout: float = DEFAULT_TIMEOUT
    half_open_requests: int = DEFAULT_HALF_OPEN_REQUESTS
    failure_rate_threshold: float | None = None
    window_size: int = DEFAULT_WINDOW_SIZE
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    slow_call_seconds: float | None = None
    slow_call_rate_threshold: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.failure_threshold < 1:
            problems.append("failure_threshold must be at least 1")
        if self.timeout < 0:
            problems.append("timeout must not be negative")
        if self.half_open_requests < 1:
            problems.append("half_open_requests must be at least 1")
        if self.failure_rate_threshold is not None and not 0 < self.failure_rate_threshold <= 1:
            problems.append("failure_rate_threshold must be above 0 and at most 1")
        if self.window_size < 1:
            problems.append("window_size must be at least 1")
        if not 1 <= self.minimum_calls <= self.window_size:
            problems.append("minimum_calls must be 1 to window_size")
        if self.slow_call_seconds is not None and self.slow_call_seconds <= 0:
            problems.append("slow_call_seconds must be positive")
        rate = self.slow_call_rate_threshold
        if rate is not None and not 0 < rate <= 1:
            problems.append("slow_call_rate_threshold must be above 0 and at most 1")
        if rate is not None and self.slow_call_seconds is None:
            problems.append("slow_call_rate_threshold needs slow_call_seconds")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_request(
        cls,
        *,
        enabled: bool = True,
        failure_threshold: int = 0,
        timeout: float = 0.0,
        half_open_requests: int = 0,
        failure_rate_threshold: float = 0.0,
        window_size: int = 0,
        minimum_calls: int = 0,
        slow_call_seconds: float = 0.0,
        slow_call_rate_threshold: float = 0.0,
    ) -> BreakerConfig:
        """Settings from `CircuitBreakerConfig`, whose zero values mean the defaults
        (or, for the optional rules, that the rule is off).

        Raises:
            ValueError: settings that contradict each other (say `minimum_calls`
                above `window_size`).
        """
        window = window_size or DEFAULT_WINDOW_SIZE
        return cls(
            enabled=enabled,
            failure_threshold=failure_threshold or DEFAULT_FAILURE_THRESHOLD,
            timeout=timeout or DEFAULT_TIMEOUT,
            half_open_requests=half_open_requests or DEFAULT_HALF_OPEN_REQUESTS,
            failure_rate_threshold=failure_rate_threshold or None,
            window_size=window,
            minimum_calls=minimum_calls or min(DEFAULT_MINIMUM_CALLS, window),
            slow_call_seconds=slow_call_seconds or None,
            slow_call_rate_threshold=slow_call_rate_threshold or None,
        )

    @classmethod
    def from_proto(cls, message: Any) -> BreakerConfig:
        """Settings from a `CircuitBreakerConfig` message (any object with its field
        names), as `from_request` reads them.

        Raises:
            ValueError: as `from_request`.
        """
        names = inspect.signature(cls.from_request).parameters
        return cls.from_request(**{name: getattr(message, name) for name in names})

    @property
    def windowed(self) -> bool:
        """Is any rate rule on (so results go into the sliding window)?"""
        return self.failure_rate_threshold is not None or self.slow_call_rate_threshold is not None


@dataclass(frozen=True, slots=True)
class BreakerView:
    """What GetCircuitState shows, as of one ``now``.

    Attributes:
        state: position after any lazy OPEN to HALF_OPEN move.
        forced: held open by `force_open` (no probing until `reset`).
        consecutive_failures: failures since the last success or since it closed.
        failure_count, success_count: results counted since creation (slow successes
            are counted as failures, as the breaker judged them).
        slow_call_count: successes that were judged failures for being slow.
        open_count: times it opened.
        refused_count: `allow` calls answered False ("dispatches held back").
        opened_at: when it last opened; None if never.
        next_probe_at: while OPEN and not forced, when it turns HALF_OPEN.
        trials_in_flight: trial dispatches allowed and not yet reported.
        trial_successes: trials that succeeded in this HALF_OPEN period.
        half_open_remaining: trials still allowed before it decides (HALF_OPEN only).
        window_calls, window_failures, window_slow_calls: the sliding window's
            content (CLOSED, with a rate rule on).
    """

    state: CircuitState
    forced: bool
    consecutive_failures: int
    failure_count: int
    success_count: int
    slow_call_count: int
    open_count: int
    refused_count: int
    opened_at: float | None
    next_probe_at: float | None
    trials_in_flight: int
    trial_successes: int
    half_open_remaining: int
    window_calls: int
    window_failures: int
    window_slow_calls: int

    @property
    def failure_rate(self) -> float:
        """Failures over the window's results; 0 when it is empty."""
        return self.window_failures / self.window_calls if self.window_calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Slow calls over the window's results; 0 when it is empty."""
        return self.window_slow_calls / self.window_calls if self.window_calls else 0.0


class CircuitBreaker:
    """The breaker of one agent. Every method takes the current time as ``now``.

    Args:
        config: settings; None means the seed's defaults.
    """

    __slots__ = (
        "_config",
        "_consecutive",
        "_failures",
        "_forced",
        "_in_flight",
        "_open_count",
        "_opened_at",
        "_refused",
        "_slow",
        "_state",
        "_successes",
        "_transitions",
        "_trial_successes",
        "_window",
        "_window_failures",
        "_window_slow",
    )

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self._config = config or BreakerConfig()
        self._state = CircuitState.CLOSED
        self._forced = False
        self._consecutive = 0
        self._failures = 0
        self._successes = 0
        self._slow = 0
        self._open_count = 0
        self._refused = 0
        self._opened_at: float | None = None
        self._in_flight = 0
        self._trial_successes = 0
        self._window: deque[tuple[bool, bool]] | None = None
        """(failed, slow) of the most recent results while CLOSED. Made at the first
        result a rate rule counts: most breakers have no rate rule, and an idle agent's
        breaker sees no result, so neither pays for an empty window."""
        self._window_failures = 0
        self._window_slow = 0
        self._transitions: list[Transition] = []

    @property
    def config(self) -> BreakerConfig:
        """The effective settings."""
        return self._config

    def state(self, now: float) -> CircuitState:
        """The position as of ``now`` (OPEN turns HALF_OPEN here once the timeout passed)."""
        self._advance(now)
        return self._state

    def peek(self, now: float) -> CircuitState:
        """The position as of ``now``, like `state`, without moving the breaker: for
        readers outside the dispatcher (a metrics scrape), which must not record the
        OPEN to HALF_OPEN transition themselves."""
        probe_at = self._next_probe_at()
        if probe_at is not None and now >= probe_at:
            return CircuitState.HALF_OPEN
        return self._state

    def allow(self, now: float) -> bool:
        """May a task be dispatched to this agent now?

        In HALF_OPEN a True answer takes a trial slot: the caller must dispatch and
        later report the result, or hand the slot back with `release`.
        """
        self._advance(now)
        if self._state is CircuitState.CLOSED:
            return True
        if (
            self._state is CircuitState.HALF_OPEN
            and self._in_flight + self._trial_successes < self._config.half_open_requests
        ):
            self._in_flight += 1
            return True
        self._refused += 1
        return False

    def release(self, now: float) -> None:
        """Hand back a trial slot whose task will not report (not dispatched after all,
        lease lost, cancelled). Outside HALF_OPEN, or with no trial out, it does nothing.
        """
        self._advance(now)
        if self._state is CircuitState.HALF_OPEN and self._in_flight > 0:
            self._in_flight -= 1

    def record_success(self, now: float, duration: float = 0.0) -> None:
        """A task dispatched to the agent succeeded after ``duration`` seconds.

        A success slower than `slow_call_seconds` is a slow call: a failure, unless
        slow calls are judged by their rate (`slow_call_rate_threshold`).
        """
        config = self._config
        slow = config.slow_call_seconds is not None and duration > config.slow_call_seconds
        if slow:
            self._slow += 1
            if config.slow_call_rate_threshold is None:
                self.record_failure(now)
                return
        self._advance(now)
        self._successes += 1
        self._consecutive = 0
        if self._state is CircuitState.CLOSED:
            self._remember(False, slow)
            # A success lowers the failure rate; only a slow one can raise a rate.
            if slow and config.enabled and self._slow_rate_exceeded():
                self._open(now, TransitionReason.SLOW_CALL_RATE)
        elif self._state is CircuitState.HALF_OPEN and slow and config.enabled:
            self._open(now, TransitionReason.TRIAL_SLOW)
        elif self._state is CircuitState.HALF_OPEN and self._in_flight > 0:
            # A success arriving with no trial out is a straggler dispatched before
            # the breaker opened: counted, but it is no evidence from a trial.
            self._in_flight -= 1
            self._trial_successes += 1
            if self._trial_successes >= self._config.half_open_requests:
                self._move(CircuitState.CLOSED, now, TransitionReason.TRIALS_SUCCEEDED)

    def record_failure(self, now: float) -> None:
        """A task dispatched to the agent failed (or timed out)."""
        self._advance(now)
        self._failures += 1
        self._consecutive += 1
        if not self._config.enabled:
            return
        if self._state is CircuitState.CLOSED:
            self._remember(True, False)
            if self._consecutive >= self._config.failure_threshold:
                self._open(now, TransitionReason.CONSECUTIVE_FAILURES)
            else:
                reason = self._rate_exceeded()
                if reason is not None:
                    self._open(now, reason)
        elif self._state is CircuitState.HALF_OPEN:
            # Any failure now is fresh evidence the agent is still unwell, trial or not.
            self._open(now, TransitionReason.TRIAL_FAILED)
        # OPEN: a late result of an earlier dispatch; the timer is not restarted.

    def force_open(self, now: float) -> None:
        """Hold the breaker OPEN, without probing, until `reset`."""
        self._advance(now)
        if self._forced:
            return
        self._forced = True
        if self._state is CircuitState.OPEN:
            # Already open: it stops probing, but it did not open again.
            self._move(CircuitState.OPEN, now, TransitionReason.FORCED_OPEN)
        else:
            self._open(now, TransitionReason.FORCED_OPEN)

    def reset(self, now: float) -> None:
        """Close the breaker and forget recent history (consecutive failures, window,
        trials); the running totals stay."""
        self._advance(now)
        self._forced = False
        self._consecutive = 0
        self._clear_recent()
        if self._state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED, now, TransitionReason.RESET)

    def view(self, now: float) -> BreakerView:
        """Everything GetCircuitState shows, as of ``now``."""
        self._advance(now)
        half_open = self._state is CircuitState.HALF_OPEN
        return BreakerView(
            state=self._state,
            forced=self._forced,
            consecutive_failures=self._consecutive,
            failure_count=self._failures,
            success_count=self._successes,
            slow_call_count=self._slow,
            open_count=self._open_count,
            refused_count=self._refused,
            opened_at=self._opened_at,
            next_probe_at=self._next_probe_at(),
            trials_in_flight=self._in_flight,
            trial_successes=self._trial_successes,
            half_open_remaining=(
                self._config.half_open_requests - self._in_flight - self._trial_successes
                if half_open
                else 0
            ),
            window_calls=self._window_calls(),
            window_failures=self._window_failures,
            window_slow_calls=self._window_slow,
        )

    @property
    def has_transitions(self) -> bool:
        """Whether a transition happened since the last `drain_transitions`."""
        return bool(self._transitions)

    def drain_transitions(self) -> list[Transition]:
        """The transitions since the last drain, oldest first; the queue is emptied."""
        drained, self._transitions = self._transitions, []
        return drained

    # -- internals -----------------------------------------------------------------------

    def _next_probe_at(self) -> float | None:
        if self._state is not CircuitState.OPEN or self._forced or self._opened_at is None:
            return None
        return self._opened_at + self._config.timeout

    def _advance(self, now: float) -> None:
        """The lazy OPEN to HALF_OPEN move, dated when the timeout ran out."""
        probe_at = self._next_probe_at()
        if probe_at is not None and now >= probe_at:
            self._move(CircuitState.HALF_OPEN, probe_at, TransitionReason.TIMEOUT_ELAPSED)

    def _open(self, now: float, reason: TransitionReason) -> None:
        self._opened_at = now
        self._open_count += 1
        self._move(CircuitState.OPEN, now, reason)

    def _move(self, to: CircuitState, at: float, reason: TransitionReason) -> None:
        self._transitions.append(Transition(self._state, to, at, reason))
        if to is CircuitState.CLOSED:
            self._consecutive = 0
        self._state = to
        self._clear_recent()

    def _clear_recent(self) -> None:
        """Each state starts with an empty window and no trials."""
        self._in_flight = 0
        self._trial_successes = 0
        if self._window is not None:
            self._window.clear()
        self._window_failures = 0
        self._window_slow = 0

    def _remember(self, failed: bool, slow: bool) -> None:
        """Add a CLOSED-state result to the sliding window (when a rate rule is on)."""
        if not self._config.windowed:
            return
        window = self._window
        if window is None:
            window = self._window = deque(maxlen=self._config.window_size)
        elif len(window) == window.maxlen:
            old_failed, old_slow = window[0]
            self._window_failures -= old_failed
            self._window_slow -= old_slow
        window.append((failed, slow))
        self._window_failures += failed
        self._window_slow += slow

    def _window_calls(self) -> int:
        return 0 if self._window is None else len(self._window)

    def _rate_exceeded(self) -> TransitionReason | None:
        """After a failure: the rate rule the window now breaks, if any."""
        threshold = self._config.failure_rate_threshold
        calls = self._window_calls()
        if (
            threshold is not None
            and calls >= self._config.minimum_calls
            and self._window_failures / calls >= threshold
        ):
            return TransitionReason.FAILURE_RATE
        return None

    def _slow_rate_exceeded(self) -> bool:
        threshold = self._config.slow_call_rate_threshold
        calls = self._window_calls()
        return (
            threshold is not None
            and calls >= self._config.minimum_calls
            and self._window_slow / calls >= threshold
        )
