"""The backpressure policy: bounded admission, priority order, hysteresis, exact counts."""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.backpressure import (
    Admission,
    BackpressureConfig,
    BoundedQueue,
    EvictionReason,
    Outcome,
    Priority,
    QueueCounts,
    Strategy,
    validate_backpressure,
)

LOW, NORMAL, HIGH, CRITICAL = Priority


def queue(
    strategy: Strategy, max_size: int = 10, high: float = 0.8, low: float = 0.3
) -> BoundedQueue:
    return BoundedQueue(BackpressureConfig(max_size, high, low, strategy))


def fill(q: BoundedQueue, *priorities: Priority, prefix: str = "t") -> list[str]:
    ids = []
    for i, priority in enumerate(priorities):
        task_id = f"{prefix}{i}"
        assert q.offer(task_id, priority).accepted
        ids.append(task_id)
    return ids


def balanced(counts: QueueCounts, depth: int) -> bool:
    return counts.accepted == counts.taken + counts.removed + counts.evicted + depth


# -- configuration -------------------------------------------------------------------------


def test_seed_config_puts_watermarks_at_8000_and_3000() -> None:
    # Given the seed's high-volume queue
    config = BackpressureConfig.from_request(
        strategy="shed-load", max_size=10_000, high_watermark=0.8, low_watermark=0.3
    )

    # When a queue is built from it
    q = BoundedQueue(config)

    # Then pressure starts at depth 8,000 and ends below 3,000
    assert config.strategy is Strategy.SHED_LOAD
    assert (q.high_mark, q.low_mark) == (8_000, 3_000)


def test_request_zero_values_mean_the_documented_defaults() -> None:
    # Given an empty backpressure block, when read, then the proto's defaults apply
    config = BackpressureConfig.from_request()
    assert config == BackpressureConfig(10_000, 0.8, 0.3, Strategy.REJECT)


def test_watermarks_are_immune_to_float_noise() -> None:
    # Given 0.7 * 10, which is 7.000000000000001 in floating point
    q = queue(Strategy.REJECT, max_size=10, high=0.7, low=0.3)

    # When seven tasks are queued, then pressure is on exactly at seven
    fill(q, *[NORMAL] * 6)
    assert not q.pressure
    q.offer("last", NORMAL)
    assert q.high_mark == 7
    assert q.pressure


@pytest.mark.parametrize(
    ("kwargs", "paths"),
    [
        ({}, []),
        ({"strategy": "shed-load", "max_size": 5, "high_watermark": 0.9}, []),
        ({"strategy": "drop-newest"}, ["backpressure.strategy"]),
        ({"max_size": -1}, ["backpressure.maxSize"]),
        ({"low_watermark": 0.9}, ["backpressure.lowWatermark"]),
        ({"high_watermark": 0.5, "low_watermark": 0.5}, ["backpressure.lowWatermark"]),
        ({"high_watermark": 1.5}, ["backpressure.highWatermark"]),
    ],
)
def test_validation_reports_paths_in_json_names(
    kwargs: dict[str, object], paths: list[str]
) -> None:
    # Given a create request's backpressure block, when validated, then the paths name fields
    violations = validate_backpressure(**kwargs)  # type: ignore[arg-type]
    assert [v.path for v in violations] == paths


def test_config_refuses_watermarks_without_hysteresis() -> None:
    # Given equal watermarks, when configured, then it is refused
    with pytest.raises(ValueError, match="low < high"):
        BackpressureConfig(10, 0.5, 0.5)
    with pytest.raises(ValueError, match="max_size"):
        BackpressureConfig(0)


def test_priority_names_parse_and_unknown_ones_fail() -> None:
    # Given wire names, when parsed, then empty is normal and unknown is an error
    assert Priority.parse("critical") is CRITICAL
    assert Priority.parse("") is NORMAL
    assert CRITICAL.label == "critical"
    with pytest.raises(ValueError, match="unknown priority"):
        Priority.parse("urgent")


# -- ordering --------------------------------------------------------------------------------


def test_take_serves_highest_priority_then_oldest() -> None:
    # Given tasks of mixed priorities
    q = queue(Strategy.REJECT)
    for task_id, priority in [("a", LOW), ("b", HIGH), ("c", NORMAL), ("d", HIGH), ("e", CRITICAL)]:
        q.offer(task_id, priority)

    # When drained, then critical first, and within a priority the oldest first
    assert list(q) == ["e", "b", "d", "c", "a"]
    assert [q.take() for _ in range(6)] == ["e", "b", "d", "c", "a", None]
    assert q.counts().taken == 5


def test_removed_task_is_skipped_and_counted() -> None:
    # Given three queued tasks
    q = queue(Strategy.REJECT)
    fill(q, NORMAL, NORMAL, NORMAL)

    # When the middle one is cancelled
    assert q.remove("t1")
    assert not q.remove("t1")

    # Then it is never taken, and the counts still balance
    assert [q.take(), q.take(), q.take()] == ["t0", "t2", None]
    assert q.counts().removed == 1
    assert balanced(q.counts(), q.depth)


def test_an_id_offered_again_after_removal_takes_its_new_place() -> None:
    # Given a removed task whose id comes back later with another priority
    q = queue(Strategy.REJECT)
    q.offer("x", NORMAL)
    q.offer("y", NORMAL)
    q.remove("x")
    q.offer("x", LOW)

    # When drained, then the old slot is ignored and "x" is served as the low task it is
    assert q.priority_of("x") is LOW
    assert [q.take(), q.take(), q.take()] == ["y", "x", None]
    assert q.counts(LOW).taken == 1
    assert q.counts(NORMAL).removed == 1


def test_offering_a_queued_id_again_is_a_caller_bug() -> None:
    # Given a queued task, when its id is offered again, then nothing changes
    q = queue(Strategy.REJECT)
    q.offer("x")
    with pytest.raises(ValueError, match="already queued"):
        q.offer("x", HIGH)
    assert q.depth == 1
    assert q.counts().accepted == 1


def test_many_removals_behind_an_old_task_do_not_leak_slots() -> None:
    # Given an old low task that high-priority traffic keeps from being taken
    q = queue(Strategy.REJECT, max_size=100)
    q.offer("old", LOW)

    # When 10,000 tasks come and get cancelled behind it
    for i in range(10_000):
        q.offer(f"x{i}", LOW)
        q.remove(f"x{i}")

    # Then stale slots were swept (a private peek: the public view cannot see them)
    slots = sum(len(lane.ids) for lane in q._lanes)
    assert slots <= 1_100
    assert list(q) == ["old"]


# -- strategies ------------------------------------------------------------------------------


def test_shed_load_evicts_the_oldest_of_the_lowest_priority_for_a_higher_newcomer() -> None:
    # Given a full shed-load queue
    q = queue(Strategy.SHED_LOAD, max_size=4)
    fill(q, NORMAL, LOW, HIGH, LOW)

    # When a high task arrives
    admission = q.offer("new", HIGH)

    # Then the oldest low task made room for it
    assert admission.outcome is Outcome.ACCEPTED
    assert admission.evicted == (("t1", EvictionReason.LOWER_PRIORITY),)
    assert admission.depth == 4
    assert q.counts(LOW).evicted_lower_priority == 1
    assert "t1" not in q


def test_shed_load_sheds_the_newcomer_when_nothing_queued_ranks_below_it() -> None:
    # Given a full queue of normal tasks
    q = queue(Strategy.SHED_LOAD, max_size=3)
    fill(q, NORMAL, NORMAL, HIGH)

    # When a normal and a low task arrive, then both are shed and nothing is evicted
    for priority in (NORMAL, LOW):
        admission = q.offer(f"late-{priority.label}", priority)
        assert admission == Admission(Outcome.SHED, (), True, 3, None)
    assert q.counts().shed == 2
    assert q.counts().dropped == 2
    assert list(q) == ["t2", "t0", "t1"]


def test_reject_refuses_with_a_retry_hint() -> None:
    # Given a full reject queue
    q = BoundedQueue(BackpressureConfig(10, 0.8, 0.3, Strategy.REJECT, retry_after=2.0))
    fill(q, *[NORMAL] * 10)

    # When offered without and with a known drain rate
    plain = q.offer("x", CRITICAL)
    estimated = q.offer("y", NORMAL, drain_rate=4.0)
    stalled = q.offer("z", NORMAL, drain_rate=0.001)

    # Then each is refused; the hint is the constant, the time to reach the low watermark
    # at the drain rate (10 - 3 + 1 tasks at 4/s), or capped at the constant
    assert plain.outcome is Outcome.REJECTED
    assert plain.retry_after == 2.0
    assert estimated.retry_after == pytest.approx(2.0)
    assert stalled.retry_after == 2.0
    assert q.offer("w", NORMAL, drain_rate=100.0).retry_after == pytest.approx(0.08)
    assert q.counts().rejected == 4
    assert q.counts(CRITICAL).rejected == 1
    assert q.depth == 10


def test_block_waits_until_the_depth_falls_below_the_low_watermark() -> None:
    # Given a block queue of 10 (pressure at 8, relief below 3) that is full
    q = queue(Strategy.BLOCK)
    fill(q, *[NORMAL] * 10)

    # When a producer offers, then it must wait
    assert q.offer("p", NORMAL).outcome is Outcome.WAIT
    assert q.blocked
    assert not q.can_unblock()

    # When dispatch makes room but depth is still above the low watermark
    for _ in range(5):
        q.take()

    # Then newcomers still wait, so they cannot overtake the producer already waiting
    assert q.depth == 5
    assert q.offer("q", NORMAL).outcome is Outcome.WAIT
    assert not q.can_unblock()

    # When the depth falls below 3, then the producer may retry and is accepted
    for _ in range(3):
        q.take()
    assert q.can_unblock()
    assert not q.blocked
    assert q.offer("p", NORMAL).accepted
    assert q.counts().waited == 2


def test_blocked_producer_that_gives_up_is_counted_as_rejected() -> None:
    # Given a full block queue and a waiting producer
    q = queue(Strategy.BLOCK, max_size=2)
    fill(q, NORMAL, NORMAL)
    assert q.offer("p", HIGH).outcome is Outcome.WAIT

    # When its deadline passes
    q.give_up(HIGH)

    # Then the refusal is counted under its priority
    assert q.counts(HIGH).rejected == 1


def test_drop_oldest_evicts_the_oldest_task_whatever_its_priority() -> None:
    # Given a full drop-oldest queue whose oldest task is critical
    q = queue(Strategy.DROP_OLDEST, max_size=3)
    fill(q, CRITICAL, LOW, NORMAL)

    # When a low task arrives
    admission = q.offer("new", LOW)

    # Then the critical one, the oldest, is dropped
    assert admission.outcome is Outcome.ACCEPTED
    assert admission.evicted == (("t0", EvictionReason.OLDEST),)
    assert q.counts(CRITICAL).evicted_oldest == 1
    assert list(q) == ["t2", "t1", "new"]


# -- pressure --------------------------------------------------------------------------------


def test_pressure_turns_on_at_the_high_watermark_and_off_only_below_the_low_one() -> None:
    # Given a queue of 10 with watermarks 0.8 and 0.3
    q = queue(Strategy.REJECT)

    # When filled to 7, then no pressure; at 8 it turns on
    fill(q, *[NORMAL] * 7)
    assert not q.pressure
    assert q.offer("eighth", NORMAL).pressure

    # When drained to 3, then it stays on; below 3 it turns off
    while q.depth > 3:
        q.take()
    assert q.pressure
    q.take()
    assert not q.pressure

    # When it climbs back to 7, then it stays off (hysteresis in the other direction)
    fill(q, *[NORMAL] * 5, prefix="again")
    assert q.depth == 7
    assert not q.pressure


# -- memory ----------------------------------------------------------------------------------


def test_a_full_queue_of_100000_tasks_stays_lean() -> None:
    # Given 100,000 task ids that exist anyway (the task records own them)
    n = 100_000
    ids = [f"task-{i:08d}" for i in range(n)]
    q = BoundedQueue(BackpressureConfig(n, 0.8, 0.3, Strategy.SHED_LOAD))
    gc.collect()

    # When they are all queued with mixed priorities
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, task_id in enumerate(ids):
        q.offer(task_id, _PRIORITY_CYCLE[i % 4])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    # Then the queue's own bookkeeping stays well under the budget
    per_entry = (after - before) / n
    print(f"\nbackpressure queue: {per_entry:.0f} bytes per queued task (ids excluded)")
    assert q.depth == n
    assert per_entry < 400


_PRIORITY_CYCLE = (LOW, NORMAL, HIGH, CRITICAL)


# -- properties against a reference model ----------------------------------------------------


@dataclass
class Reference:
    """A deliberately naive model: a list, linear scans, exact fractions."""

    strategy: Strategy
    max_size: int
    high: float
    low: float
    items: list[tuple[int, Priority, str]] = field(default_factory=list)
    seq: int = 0
    pressure: bool = False
    blocked: bool = False

    @property
    def high_mark(self) -> int:
        return max(1, math.ceil(Fraction(str(self.high)) * self.max_size))

    @property
    def low_mark(self) -> int:
        return math.ceil(Fraction(str(self.low)) * self.max_size)

    def _settle(self) -> None:
        if len(self.items) >= self.high_mark:
            self.pressure = True
        elif len(self.items) < self.low_mark:
            self.pressure = False
            self.blocked = False

    def offer(self, task_id: str, priority: Priority) -> tuple[Outcome, list[str]]:
        if self.strategy is Strategy.BLOCK and (self.blocked or len(self.items) >= self.max_size):
            self.blocked = True
            return Outcome.WAIT, []
        evicted: list[str] = []
        if len(self.items) >= self.max_size:
            if self.strategy is Strategy.REJECT:
                return Outcome.REJECTED, []
            if self.strategy is Strategy.SHED_LOAD:
                victim = min(self.items, key=lambda item: (item[1], item[0]))
                if victim[1] >= priority:
                    return Outcome.SHED, []
            else:
                victim = min(self.items)
            self.items.remove(victim)
            evicted.append(victim[2])
        self.items.append((self.seq, priority, task_id))
        self.seq += 1
        self._settle()
        return Outcome.ACCEPTED, evicted

    def take(self) -> str | None:
        if not self.items:
            return None
        best = max(self.items, key=lambda item: (item[1], -item[0]))
        self.items.remove(best)
        self._settle()
        return best[2]

    def remove(self, task_id: str) -> bool:
        for item in self.items:
            if item[2] == task_id:
                self.items.remove(item)
                self._settle()
                return True
        return False


_op = st.one_of(
    st.tuples(st.just("offer"), st.sampled_from(Priority)),
    st.tuples(st.just("reoffer"), st.sampled_from(Priority)),
    st.tuples(st.just("take"), st.just(LOW)),
    st.tuples(st.just("remove"), st.sampled_from(Priority)),
)
_watermarks = st.sampled_from([(0.8, 0.3), (1.0, 0.5), (0.5, 0.4), (0.7, 0.1), (0.35, 0.3)])


@settings(max_examples=300, deadline=None)
@given(
    strategy=st.sampled_from(Strategy),
    max_size=st.integers(1, 8),
    marks=_watermarks,
    ops=st.lists(_op, max_size=80),
    picks=st.randoms(use_true_random=False),
)
def test_any_sequence_matches_the_reference_and_keeps_the_books(
    strategy: Strategy,
    max_size: int,
    marks: tuple[float, float],
    ops: list[tuple[str, Priority]],
    picks: random.Random,
) -> None:
    # Given a queue and the naive reference, under any strategy and watermarks
    high, low = marks
    q = BoundedQueue(BackpressureConfig(max_size, high, low, strategy))
    ref = Reference(strategy, max_size, high, low)
    issued: list[str] = []

    # When any sequence of offers, re-offers, takes and cancellations is applied
    for op, priority in ops:
        queued_before = {item[2]: item[1] for item in ref.items}
        if op in ("offer", "reoffer"):
            gone = [t for t in issued if t not in q]
            if op == "reoffer" and gone:
                task_id = picks.choice(gone)
            else:
                task_id = f"t{len(issued)}"
                issued.append(task_id)
            got = q.offer(task_id, priority)
            event(f"{strategy.value}: {got.outcome.value}, evicted={len(got.evicted)}")
            want, want_evicted = ref.offer(task_id, priority)
            assert got.outcome is want
            assert [victim for victim, _ in got.evicted] == want_evicted
            assert got.depth == q.depth
            assert got.pressure == q.pressure
            # Then shed-load drops only what ranks below everything else, newcomer included
            if strategy is Strategy.SHED_LOAD:
                if got.outcome is Outcome.SHED:
                    assert all(p >= priority for p in queued_before.values())
                for victim, _reason in got.evicted:
                    assert queued_before[victim] < priority
                    assert queued_before[victim] == min(queued_before.values())
            if strategy is not Strategy.BLOCK:
                assert q.blocked is False
        elif op == "take":
            assert q.take() == ref.take()
        else:
            candidates = issued or ["nobody"]
            task_id = picks.choice(candidates)
            assert q.remove(task_id) == ref.remove(task_id)

        # Then, after every step: bounded, ordered alike, pressure as the model says,
        # and every accepted task is somewhere in the books
        assert q.depth == len(ref.items) <= max_size
        assert q.pressure == ref.pressure
        assert q.can_unblock() == (not ref.pressure)
        total = q.counts()
        assert balanced(total, q.depth)
        for p in Priority:
            assert balanced(q.counts(p), q.depth_of(p))
    assert list(q) == [item[2] for item in sorted(ref.items, key=lambda i: (-i[1], i[0]))]


@settings(max_examples=100, deadline=None)
@given(
    offers=st.lists(st.sampled_from(Priority), max_size=60),
    max_size=st.integers(1, 6),
)
def test_shed_load_never_drops_critical_while_a_lower_task_is_queued(
    offers: list[Priority], max_size: int
) -> None:
    # Given a shed-load queue flooded by producers that nobody drains
    q = queue(Strategy.SHED_LOAD, max_size=max_size)
    for i, priority in enumerate(offers):
        before = {t: q.priority_of(t) for t in q}

        # When a task is offered
        admission = q.offer(f"t{i}", priority)

        # Then a critical task leaves only when everything queued was critical
        if admission.outcome is Outcome.SHED and priority is CRITICAL:
            assert set(before.values()) == {CRITICAL}
        for victim, _reason in admission.evicted:
            assert before[victim] is not CRITICAL
    assert q.counts(CRITICAL).evicted == 0
