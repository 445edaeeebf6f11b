"""The circuit breaker policy, driven by an injected clock: no test sleeps."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.breaker import (
    BreakerConfig,
    CircuitBreaker,
    CircuitState,
    Transition,
    TransitionReason,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def fail(breaker: CircuitBreaker, times: int, now: float) -> None:
    for _ in range(times):
        breaker.record_failure(now)


def opened_seed_breaker(at: float = 100.0) -> CircuitBreaker:
    """A breaker with the seed's settings that five failures opened at `at`."""
    breaker = CircuitBreaker()
    fail(breaker, 5, at)
    return breaker


# -- the seed's story ------------------------------------------------------------------------


def test_defaults_are_the_seeds() -> None:
    # Given no settings, when a breaker is made, then it uses 5 failures, 30 s, 3 trials
    config = CircuitBreaker().config
    assert (config.failure_threshold, config.timeout, config.half_open_requests) == (5, 30.0, 3)
    assert BreakerConfig.from_request() == config
    assert BreakerConfig.from_request(failure_threshold=2).failure_threshold == 2


def test_five_failures_in_a_row_open_it() -> None:
    # Given a closed breaker
    breaker = CircuitBreaker()

    # When four failures come, then it stays closed
    fail(breaker, 4, now=10.0)
    assert breaker.state(10.0) is CLOSED
    assert breaker.allow(10.0)

    # When the fifth comes, then it opens, and the transition says why and when
    breaker.record_failure(11.0)
    assert breaker.state(11.0) is OPEN
    assert breaker.drain_transitions() == [
        Transition(CLOSED, OPEN, 11.0, TransitionReason.CONSECUTIVE_FAILURES)
    ]
    assert breaker.drain_transitions() == []


def test_a_success_breaks_the_run_of_failures() -> None:
    # Given four failures, a success, and four more failures
    breaker = CircuitBreaker()
    fail(breaker, 4, 1.0)
    breaker.record_success(2.0, duration=0.1)
    fail(breaker, 4, 3.0)

    # Then it is still closed: failures must be consecutive
    assert breaker.state(3.0) is CLOSED
    assert breaker.view(3.0).consecutive_failures == 4


def test_while_open_nothing_is_allowed_until_the_probe_time() -> None:
    # Given a breaker opened at t=100
    breaker = opened_seed_breaker(at=100.0)
    view = breaker.view(100.0)
    assert (view.opened_at, view.next_probe_at, view.open_count) == (100.0, 130.0, 1)

    # When dispatch asks during the 30 s, then it is always refused and counted
    assert not any(breaker.allow(t) for t in (100.0, 115.0, 129.999))
    assert breaker.view(129.999).refused_count == 3
    assert breaker.state(129.999) is OPEN


def test_after_the_timeout_exactly_half_open_requests_trials_go_through() -> None:
    # Given a breaker opened at t=100
    breaker = opened_seed_breaker(at=100.0)
    breaker.drain_transitions()

    # When dispatch asks at t=131
    answers = [breaker.allow(131.0) for _ in range(5)]

    # Then exactly three trials are allowed, and it turned half-open at t=130
    assert answers == [True, True, True, False, False]
    assert breaker.drain_transitions() == [
        Transition(OPEN, HALF_OPEN, 130.0, TransitionReason.TIMEOUT_ELAPSED)
    ]
    view = breaker.view(131.0)
    assert (view.state, view.trials_in_flight, view.half_open_remaining) == (HALF_OPEN, 3, 0)
    assert view.next_probe_at is None


def test_all_trials_succeeding_close_it() -> None:
    # Given three trials out
    breaker = opened_seed_breaker(at=0.0)
    assert all(breaker.allow(30.0) for _ in range(3))

    # When two succeed, then it waits for the third
    breaker.record_success(31.0)
    breaker.record_success(31.5)
    assert breaker.state(31.5) is HALF_OPEN
    assert breaker.view(31.5).trial_successes == 2
    assert not breaker.allow(31.5)

    # When the third succeeds, then it closes with clean counts
    breaker.record_success(32.0)
    assert breaker.state(32.0) is CLOSED
    assert breaker.allow(32.0)
    assert breaker.view(32.0).consecutive_failures == 0
    assert breaker.drain_transitions()[-1] == Transition(
        HALF_OPEN, CLOSED, 32.0, TransitionReason.TRIALS_SUCCEEDED
    )


def test_a_failed_trial_reopens_it_and_restarts_the_timer() -> None:
    # Given three trials out after opening at t=0
    breaker = opened_seed_breaker(at=0.0)
    assert all(breaker.allow(30.0) for _ in range(3))
    breaker.record_success(31.0)

    # When one trial fails at t=40
    breaker.record_failure(40.0)

    # Then it is open again until t=70, with nothing allowed before that
    view = breaker.view(40.0)
    assert (view.state, view.opened_at, view.next_probe_at, view.open_count) == (
        OPEN,
        40.0,
        70.0,
        2,
    )
    assert not breaker.allow(69.0)
    assert breaker.drain_transitions()[-1] == Transition(
        HALF_OPEN, OPEN, 40.0, TransitionReason.TRIAL_FAILED
    )

    # And the late reports of the other trials change nothing
    breaker.record_success(41.0)
    assert breaker.state(41.0) is OPEN
    assert breaker.allow(70.0)


def test_a_released_trial_slot_can_be_used_again() -> None:
    # Given all three trial slots taken
    breaker = opened_seed_breaker(at=0.0)
    assert all(breaker.allow(30.0) for _ in range(3))

    # When one dispatch does not happen after all
    breaker.release(30.5)

    # Then one more trial may go, and no more
    assert [breaker.allow(31.0), breaker.allow(31.0)] == [True, False]


def test_a_straggler_success_in_half_open_is_no_trial() -> None:
    # Given a half-open breaker with no trial out
    breaker = opened_seed_breaker(at=0.0)
    assert breaker.state(30.0) is HALF_OPEN

    # When a result of a task dispatched before it opened succeeds
    breaker.record_success(31.0)

    # Then it is counted, but all three trials are still needed
    view = breaker.view(31.0)
    assert (view.success_count, view.trial_successes, view.half_open_remaining) == (1, 0, 3)


def test_late_failures_while_open_do_not_extend_the_timeout() -> None:
    # Given a breaker opened at t=0, when more failures of earlier dispatches arrive
    breaker = opened_seed_breaker(at=0.0)
    fail(breaker, 3, 20.0)

    # Then they are counted but the probe time stays
    view = breaker.view(20.0)
    assert (view.failure_count, view.next_probe_at) == (8, 30.0)


# -- past the seed ---------------------------------------------------------------------------


def test_failure_rate_over_the_window_opens_it() -> None:
    # Given a breaker that trips at 50% failures over 10 calls, with at least 6 calls
    breaker = CircuitBreaker(
        BreakerConfig(
            failure_threshold=100, failure_rate_threshold=0.5, window_size=10, minimum_calls=6
        )
    )

    # When failures and successes alternate, then five calls are not enough evidence
    for i in range(5):
        (breaker.record_failure if i % 2 == 0 else breaker.record_success)(float(i))
    assert breaker.state(5.0) is CLOSED
    assert breaker.view(5.0).failure_rate == pytest.approx(0.6)

    # When the sixth call succeeds (3 of 6 is 50%), then a success never trips it
    breaker.record_success(6.0)
    assert breaker.state(6.0) is CLOSED

    # When the seventh fails (4 of 7), then it opens on the rate
    breaker.record_failure(7.0)
    assert breaker.state(7.0) is OPEN
    assert breaker.drain_transitions()[-1].reason is TransitionReason.FAILURE_RATE


def test_the_window_forgets_old_calls() -> None:
    # Given a window of 4 and a 75% threshold
    breaker = CircuitBreaker(
        BreakerConfig(failure_rate_threshold=0.75, window_size=4, minimum_calls=4)
    )

    # When 2 failures are followed by 3 successes and 1 failure (window: S S S F)
    for outcome in "FFSSSF":
        (breaker.record_failure if outcome == "F" else breaker.record_success)(1.0)

    # Then the rate is 25% and it stays closed
    view = breaker.view(1.0)
    assert (view.window_calls, view.window_failures, view.state) == (4, 1, CLOSED)


def test_a_slow_success_counts_as_a_failure() -> None:
    # Given calls slower than 2 s count as failures
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, slow_call_seconds=2.0))

    # When three successes take 2.5 s each (a 2.0 s one is not slow)
    breaker.record_success(1.0, duration=2.0)
    for t in (2.0, 3.0, 4.0):
        breaker.record_success(t, duration=2.5)

    # Then it opens, and the view tells slow calls apart
    view = breaker.view(4.0)
    assert (view.state, view.slow_call_count, view.failure_count, view.success_count) == (
        OPEN,
        3,
        3,
        1,
    )


def test_a_slow_trial_reopens_it() -> None:
    # Given a half-open breaker with slow-call detection
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, slow_call_seconds=1.0))
    breaker.record_failure(0.0)
    assert breaker.allow(30.0)

    # When the trial succeeds but too slowly, then it is open again
    breaker.record_success(35.0, duration=5.0)
    assert breaker.state(35.0) is OPEN


def test_slow_calls_judged_by_their_rate_open_it_on_the_rate() -> None:
    # Given slow means over 1 s, and 50% slow calls over a window of 4 opens it
    breaker = CircuitBreaker(
        BreakerConfig(
            slow_call_seconds=1.0, slow_call_rate_threshold=0.5, window_size=4, minimum_calls=4
        )
    )

    # When fast, slow, fast succeed: a slow call is still a success, and 3 calls are
    # too few to judge
    for duration in (0.1, 2.0, 0.1):
        breaker.record_success(1.0, duration)
    view = breaker.view(1.0)
    assert (view.state, view.success_count, view.failure_count, view.slow_call_count) == (
        CLOSED,
        3,
        0,
        1,
    )
    assert view.slow_call_rate == pytest.approx(1 / 3)

    # When a fourth call is slow (2 of 4), then it opens on the slow-call rate
    breaker.record_success(2.0, 3.0)
    assert breaker.state(2.0) is OPEN
    assert breaker.drain_transitions()[-1].reason is TransitionReason.SLOW_CALL_RATE


def test_a_slow_trial_reopens_it_even_when_slow_calls_are_judged_by_rate() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=1, slow_call_seconds=1.0, slow_call_rate_threshold=1.0)
    )
    breaker.record_failure(0.0)
    assert breaker.allow(30.0)
    breaker.record_success(31.0, duration=5.0)
    assert breaker.state(31.0) is OPEN
    assert breaker.drain_transitions()[-1].reason is TransitionReason.TRIAL_SLOW


def test_request_zeros_mean_defaults_and_rules_off() -> None:
    # Given the proto's zero values, then the seed's breaker with no optional rule
    config = BreakerConfig.from_request()
    assert config == BreakerConfig()
    assert not config.windowed
    # Given a small window and no minimum, then the minimum is the window
    small = BreakerConfig.from_request(failure_rate_threshold=0.5, window_size=4)
    assert (small.window_size, small.minimum_calls, small.windowed) == (4, 4, True)
    # Given a minimum above the window, then the settings are refused
    with pytest.raises(ValueError):
        BreakerConfig.from_request(window_size=4, minimum_calls=5)


def test_force_open_holds_it_open_until_reset() -> None:
    # Given a closed breaker forced open by an operator
    breaker = CircuitBreaker()
    breaker.force_open(0.0)
    breaker.force_open(1.0)

    # Then it never probes, whatever the time
    view = breaker.view(1_000.0)
    assert (view.state, view.forced, view.next_probe_at) == (OPEN, True, None)
    assert not breaker.allow(1_000.0)

    # When reset, then it closes and dispatch resumes
    breaker.reset(1_001.0)
    assert breaker.allow(1_001.0)
    assert breaker.drain_transitions() == [
        Transition(CLOSED, OPEN, 0.0, TransitionReason.FORCED_OPEN),
        Transition(OPEN, CLOSED, 1_001.0, TransitionReason.RESET),
    ]


def test_forcing_an_open_breaker_stops_its_probing() -> None:
    # Given a breaker that opened by itself at t=0
    breaker = opened_seed_breaker(at=0.0)
    breaker.drain_transitions()

    # When forced open at t=10, then it stays open past the timeout; it did not reopen
    breaker.force_open(10.0)
    assert breaker.state(60.0) is OPEN
    view = breaker.view(60.0)
    assert (view.open_count, view.opened_at) == (1, 0.0)
    assert breaker.drain_transitions() == [
        Transition(OPEN, OPEN, 10.0, TransitionReason.FORCED_OPEN)
    ]


def test_reset_of_a_closed_breaker_forgets_the_failure_run() -> None:
    # Given four failures, when reset, then a fifth failure does not open it
    breaker = CircuitBreaker()
    fail(breaker, 4, 0.0)
    breaker.reset(1.0)
    breaker.record_failure(2.0)
    assert breaker.state(2.0) is CLOSED
    assert breaker.drain_transitions() == []


def test_a_disabled_breaker_counts_but_never_trips() -> None:
    # Given a disabled breaker, when it sees many failures, then it stays closed
    breaker = CircuitBreaker(BreakerConfig(enabled=False))
    fail(breaker, 50, 0.0)
    assert breaker.allow(0.0)
    assert breaker.view(0.0).failure_count == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"timeout": -1.0},
        {"half_open_requests": 0},
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"window_size": 5, "minimum_calls": 6},
        {"slow_call_seconds": 0.0},
        {"slow_call_seconds": 1.0, "slow_call_rate_threshold": 0.0},
        {"slow_call_rate_threshold": 0.5},
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    # Given impossible settings, when configured, then they are refused
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


# -- property: a small reference model -------------------------------------------------------


@dataclass
class Model:
    """The seed's breaker in the fewest lines: no window, no slow calls, no forcing."""

    threshold: int
    timeout: float
    trials: int
    state: CircuitState = CLOSED
    run: int = 0
    opened_at: float = 0.0
    out: int = 0
    passed: int = 0

    def tick(self, now: float) -> None:
        if self.state is OPEN and now >= self.opened_at + self.timeout:
            self.state, self.out, self.passed = HALF_OPEN, 0, 0

    def open(self, now: float) -> None:
        self.state, self.opened_at, self.out, self.passed = OPEN, now, 0, 0

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN and self.out + self.passed < self.trials:
            self.out += 1
            return True
        return False

    def success(self, now: float) -> None:
        self.tick(now)
        self.run = 0
        if self.state is HALF_OPEN and self.out:
            self.out -= 1
            self.passed += 1
            if self.passed == self.trials:
                self.state = CLOSED

    def failure(self, now: float) -> None:
        self.tick(now)
        self.run += 1
        if (self.state is CLOSED and self.run >= self.threshold) or self.state is HALF_OPEN:
            self.open(now)

    def release(self, now: float) -> None:
        self.tick(now)
        if self.state is HALF_OPEN and self.out:
            self.out -= 1


_step = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 20.0)),
    st.tuples(st.sampled_from(["allow", "success", "failure", "release"]), st.just(0.0)),
)


@settings(max_examples=400, deadline=None)
@given(
    threshold=st.integers(1, 4),
    timeout=st.sampled_from([0.0, 5.0, 30.0]),
    trials=st.integers(1, 4),
    steps=st.lists(_step, max_size=100),
)
def test_random_histories_match_the_reference_model(
    threshold: int, timeout: float, trials: int, steps: list[tuple[str, float]]
) -> None:
    # Given a breaker and the reference model with the same settings
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=threshold, timeout=timeout, half_open_requests=trials)
    )
    model = Model(threshold, timeout, trials)
    now = 0.0

    # When time passes and dispatches, results and releases happen in any order
    for kind, amount in steps:
        if kind == "advance":
            now += amount
            continue
        before = breaker.view(now)
        if kind == "allow":
            allowed = breaker.allow(now)
            assert allowed == model.allow(now)
            # Then nothing is dispatched while open before the probe time
            if before.state is OPEN:
                assert before.next_probe_at is not None
                assert not allowed or now >= before.next_probe_at
        elif kind == "success":
            breaker.record_success(now)
            model.success(now)
        elif kind == "failure":
            breaker.record_failure(now)
            model.failure(now)
        else:
            breaker.release(now)
            model.release(now)

        # Then the state agrees, and trials never exceed the allowance
        view = breaker.view(now)
        model.tick(now)
        assert view.state is model.state
        assert view.trials_in_flight == model.out
        assert view.trials_in_flight + view.trial_successes <= trials
        assert view.consecutive_failures == model.run

    # And the transitions form one unbroken chain
    chain = breaker.drain_transitions()
    for earlier, later in itertools.pairwise(chain):
        assert earlier.to_state is later.from_state
        assert earlier.at <= later.at


# -- property: every option against a reference model ----------------------------------------


@dataclass
class FullModel:
    """The breaker with every option (rates, slow calls, forcing), written as plainly
    as possible: the window is a list, re-counted on every question."""

    config: BreakerConfig
    state: CircuitState = CLOSED
    forced: bool = False
    run: int = 0
    opened_at: float = 0.0
    out: int = 0
    passed: int = 0
    window: list[tuple[bool, bool]] = field(default_factory=list)
    slow_calls: int = 0
    failures: int = 0
    successes: int = 0

    def enter(self, state: CircuitState) -> None:
        self.state, self.out, self.passed, self.window = state, 0, 0, []
        if state is CLOSED:
            self.run = 0

    def tick(self, now: float) -> None:
        if self.state is OPEN and not self.forced and now >= self.opened_at + self.config.timeout:
            self.enter(HALF_OPEN)

    def open(self, now: float) -> None:
        self.opened_at = now
        self.enter(OPEN)

    def rate(self, index: int) -> float | None:
        """Share of the window with flag `index` set, once it holds enough calls."""
        if len(self.window) < self.config.minimum_calls:
            return None
        return sum(call[index] for call in self.window) / len(self.window)

    def remember(self, failed: bool, slow: bool) -> None:
        rated = self.config.failure_rate_threshold, self.config.slow_call_rate_threshold
        if rated != (None, None):
            self.window = [*self.window, (failed, slow)][-self.config.window_size :]

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN and self.out + self.passed < self.config.half_open_requests:
            self.out += 1
            return True
        return False

    def success(self, now: float, duration: float) -> None:
        config = self.config
        slow = config.slow_call_seconds is not None and duration > config.slow_call_seconds
        self.slow_calls += slow
        if slow and config.slow_call_rate_threshold is None:
            self.failure(now)
            return
        self.tick(now)
        self.successes += 1
        self.run = 0
        if self.state is CLOSED:
            self.remember(False, slow)
            rate, threshold = self.rate(1), config.slow_call_rate_threshold
            tripped = rate is not None and threshold is not None and rate >= threshold
            if slow and config.enabled and tripped:
                self.open(now)
        elif self.state is HALF_OPEN and slow and config.enabled:
            self.open(now)
        elif self.state is HALF_OPEN and self.out:
            self.out -= 1
            self.passed += 1
            if self.passed == config.half_open_requests:
                self.enter(CLOSED)

    def failure(self, now: float) -> None:
        self.tick(now)
        self.failures += 1
        self.run += 1
        if not self.config.enabled:
            return
        if self.state is CLOSED:
            self.remember(True, False)
            rate, threshold = self.rate(0), self.config.failure_rate_threshold
            if self.run >= self.config.failure_threshold or (
                rate is not None and threshold is not None and rate >= threshold
            ):
                self.open(now)
        elif self.state is HALF_OPEN:
            self.open(now)

    def release(self, now: float) -> None:
        self.tick(now)
        if self.state is HALF_OPEN and self.out:
            self.out -= 1

    def force(self, now: float) -> None:
        self.tick(now)
        if self.forced:
            return
        self.forced = True
        if self.state is OPEN:
            self.enter(OPEN)
        else:
            self.open(now)

    def reset(self, now: float) -> None:
        self.tick(now)
        self.forced = False
        self.enter(CLOSED)


@st.composite
def _configs(draw: st.DrawFn) -> BreakerConfig:
    window = draw(st.integers(1, 6))
    slow_seconds = draw(st.sampled_from([None, 1.0]))
    return BreakerConfig(
        enabled=draw(st.booleans()),
        failure_threshold=draw(st.integers(1, 5)),
        timeout=draw(st.sampled_from([0.0, 5.0, 30.0])),
        half_open_requests=draw(st.integers(1, 3)),
        failure_rate_threshold=draw(st.sampled_from([None, 0.3, 0.5, 1.0])),
        window_size=window,
        minimum_calls=draw(st.integers(1, window)),
        slow_call_seconds=slow_seconds,
        slow_call_rate_threshold=(
            draw(st.sampled_from([None, 0.5, 1.0])) if slow_seconds is not None else None
        ),
    )


_full_step = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 20.0)),
    st.tuples(st.just("success"), st.sampled_from([0.0, 0.5, 2.0])),
    st.tuples(
        st.sampled_from(["allow", "allow", "failure", "release", "force", "reset"]),
        st.just(0.0),
    ),
)


@settings(max_examples=400, deadline=None)
@given(config=_configs(), steps=st.lists(_full_step, max_size=120))
def test_every_option_matches_the_full_reference_model(
    config: BreakerConfig, steps: list[tuple[str, float]]
) -> None:
    # Given a breaker and the full model with the same (random) settings
    breaker = CircuitBreaker(config)
    model = FullModel(config)
    now = 0.0

    # When time passes and anything happens in any order
    for kind, amount in steps:
        if kind == "advance":
            now += amount
            continue
        if kind == "allow":
            assert breaker.allow(now) == model.allow(now)
        elif kind == "success":
            breaker.record_success(now, amount)
            model.success(now, amount)
        elif kind == "failure":
            breaker.record_failure(now)
            model.failure(now)
        elif kind == "release":
            breaker.release(now)
            model.release(now)
        elif kind == "force":
            breaker.force_open(now)
            model.force(now)
        else:
            breaker.reset(now)
            model.reset(now)

        # Then the breaker agrees with the model on everything GetCircuitState shows
        view = breaker.view(now)
        model.tick(now)
        assert (view.state, view.forced) == (model.state, model.forced)
        assert view.consecutive_failures == model.run
        assert view.trials_in_flight == model.out
        assert view.trial_successes == model.passed
        assert view.window_calls == len(model.window)
        assert view.window_failures == sum(f for f, _ in model.window)
        assert view.window_slow_calls == sum(s for _, s in model.window)
        assert (view.failure_count, view.success_count, view.slow_call_count) == (
            model.failures,
            model.successes,
            model.slow_calls,
        )
        # A forced breaker never probes; an open one probes at opened + timeout
        if view.state is OPEN:
            expected = None if model.forced else model.opened_at + config.timeout
            assert view.next_probe_at == expected
        # A disabled breaker only ever opens when forced
        if not config.enabled and view.state is not CLOSED:
            assert view.forced and view.state is OPEN
