"""The bulkhead policy: per-partition task and agent limits that never leak across."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.bulkhead import (
    MAX_PARTITIONS,
    Admitted,
    Bulkhead,
    IllegalTransition,
    InvalidDefinition,
    PartitionSpec,
    Refused,
    UnknownPartition,
    validate_partitions,
)


def seed_bulkhead() -> Bulkhead:
    """The seed's service-isolation bulkhead."""
    return Bulkhead(
        [
            PartitionSpec("auth", max_agents=5, max_tasks=20),
            PartitionSpec("billing", max_agents=5, max_tasks=20),
            PartitionSpec("analytics", max_agents=3, max_tasks=10),
        ]
    )


# -- validation ------------------------------------------------------------------------------


def test_seed_partitions_are_valid() -> None:
    # Given the seed's bulkhead, when built, then its partitions keep their order
    assert seed_bulkhead().names == ("auth", "billing", "analytics")


def test_validation_names_each_bad_field_by_its_json_path() -> None:
    # Given partitions with an empty name, a duplicate and zero limits
    partitions = [
        PartitionSpec("auth", 1, 1),
        PartitionSpec("", 1, 1),
        PartitionSpec("auth", 0, 0),
    ]

    # When validated
    violations = validate_partitions(partitions)

    # Then every problem is reported with the path a BadRequest needs
    assert [v.path for v in violations] == [
        "partitions[1].name",
        "partitions[2].name",
        "partitions[2].maxAgents",
        "partitions[2].maxTasks",
    ]
    assert "partitions[0]" in violations[1].description


def test_validation_bounds_the_number_of_partitions() -> None:
    # Given no partitions, or one too many
    too_many = [PartitionSpec(f"p{i}", 1, 1) for i in range(MAX_PARTITIONS + 1)]

    # When validated, then each is one violation
    assert [v.path for v in validate_partitions([])] == ["partitions"]
    assert [v.path for v in validate_partitions(too_many)] == ["partitions[64]"]
    assert validate_partitions(too_many[:MAX_PARTITIONS]) == []


def test_an_invalid_definition_cannot_be_built() -> None:
    # Given a zero task limit, when built, then it is refused with the violations
    with pytest.raises(InvalidDefinition) as raised:
        Bulkhead([PartitionSpec("auth", 1, 0)])
    assert raised.value.violations[0].path == "partitions[0].maxTasks"


# -- tasks -----------------------------------------------------------------------------------


def test_a_full_partition_refuses_naming_itself() -> None:
    # Given the analytics partition with 10 task slots
    bulkhead = seed_bulkhead()
    for _ in range(10):
        assert bulkhead.admit("analytics") == Admitted("analytics")

    # When an eleventh task arrives
    refused = bulkhead.admit("analytics")

    # Then it is refused, naming the partition, and counted
    assert isinstance(refused, Refused)
    assert refused.partition == "analytics"
    assert refused.limit == 10
    assert "'analytics'" in refused.reason
    assert bulkhead.view("analytics").rejected == 1
    assert not bulkhead.has_room("analytics")

    # And auth is untouched
    assert bulkhead.admit("auth") == Admitted("auth")


def test_running_tasks_hold_their_slots_until_they_finish() -> None:
    # Given a partition of two slots, both admitted and started
    bulkhead = Bulkhead([PartitionSpec("p", 1, 2)])
    bulkhead.admit("p")
    bulkhead.admit("p")
    bulkhead.task_started("p")
    bulkhead.task_started("p")

    # When a third task arrives, then there is no room
    assert isinstance(bulkhead.admit("p"), Refused)

    # When one completes and one fails, then both slots free up and both are counted
    bulkhead.task_finished("p", failed=False)
    bulkhead.task_finished("p", failed=True)
    view = bulkhead.view("p")
    assert (view.queued, view.running, view.completed, view.failed) == (0, 0, 1, 1)
    assert bulkhead.admit("p") == Admitted("p")


def test_lost_lease_returns_the_task_to_the_queue_keeping_its_slot() -> None:
    # Given a running task
    bulkhead = Bulkhead([PartitionSpec("p", 1, 1)])
    bulkhead.admit("p")
    bulkhead.task_started("p")

    # When its agent is lost
    bulkhead.task_returned("p")

    # Then it is queued again and the partition is still full
    view = bulkhead.view("p")
    assert (view.queued, view.running, view.in_use) == (1, 0, 1)
    assert isinstance(bulkhead.admit("p"), Refused)


def test_cancelled_tasks_free_their_slots_queued_or_running() -> None:
    # Given one queued and one running task
    bulkhead = Bulkhead([PartitionSpec("p", 1, 2)])
    bulkhead.admit("p")
    bulkhead.admit("p")
    bulkhead.task_started("p")

    # When both are cancelled
    bulkhead.task_dropped("p")
    bulkhead.task_dropped("p", running=True)

    # Then the partition is empty again and the drops are counted
    view = bulkhead.view("p")
    assert (view.queued, view.running, view.dropped) == (0, 0, 2)


def test_bookkeeping_errors_are_refused_without_change() -> None:
    # Given an empty partition
    bulkhead = Bulkhead([PartitionSpec("p", 1, 1)])

    # When a task that does not exist is started, finished, returned or dropped
    calls: list[Callable[[], None]] = [
        lambda: bulkhead.task_started("p"),
        lambda: bulkhead.task_finished("p", failed=False),
        lambda: bulkhead.task_returned("p"),
        lambda: bulkhead.task_dropped("p"),
        lambda: bulkhead.task_dropped("p", running=True),
    ]
    for call in calls:
        # Then it is an illegal transition, and the counters stay at zero
        with pytest.raises(IllegalTransition):
            call()
    assert bulkhead.view("p").in_use == 0


def test_unknown_partition_is_reported_by_name() -> None:
    # Given the seed bulkhead, when an unknown partition is addressed, then it is named
    with pytest.raises(UnknownPartition) as raised:
        seed_bulkhead().admit("search")
    assert raised.value.partition == "search"


# -- agents ----------------------------------------------------------------------------------


def test_at_most_max_agents_serve_a_partition() -> None:
    # Given analytics, served by at most 3 agents
    bulkhead = seed_bulkhead()
    assert all(bulkhead.join("analytics", f"a{i}") for i in range(3))

    # When a fourth joins, then it is turned away; a repeated join is harmless
    assert not bulkhead.join("analytics", "a3")
    assert bulkhead.join("analytics", "a0")
    assert bulkhead.view("analytics").agent_ids == ("a0", "a1", "a2")

    # When one leaves, then the fourth fits
    assert bulkhead.leave("analytics", "a1")
    assert not bulkhead.leave("analytics", "a1")
    assert bulkhead.join("analytics", "a3")
    assert bulkhead.view("analytics").agents == 3


def test_an_agent_serves_one_partition_of_a_bulkhead() -> None:
    # Given an agent in auth
    bulkhead = seed_bulkhead()
    assert bulkhead.join("auth", "a")

    # When it tries to join billing too, then it is refused and its home is known
    assert not bulkhead.join("billing", "a")
    assert bulkhead.partition_of("a") == "auth"
    assert bulkhead.view("billing").agents == 0

    # When it leaves auth, then it may join billing
    bulkhead.leave("auth", "a")
    assert bulkhead.join("billing", "a")


# -- properties ------------------------------------------------------------------------------

NAMES = ("a", "b", "c")
OPS = ("admit", "start", "finish", "fail", "return", "drop", "drop-running", "join", "leave")
_op = st.tuples(st.sampled_from(OPS), st.sampled_from(NAMES), st.integers(0, 6))
_limits = st.tuples(st.integers(1, 4), st.integers(1, 6))


def apply(bulkhead: Bulkhead, op: str, partition: str, agent: int) -> object:
    """One operation; illegal bookkeeping is skipped and reported as None."""
    try:
        if op == "admit":
            return bulkhead.admit(partition)
        if op == "start":
            bulkhead.task_started(partition)
        elif op in ("finish", "fail"):
            bulkhead.task_finished(partition, failed=op == "fail")
        elif op == "return":
            bulkhead.task_returned(partition)
        elif op in ("drop", "drop-running"):
            bulkhead.task_dropped(partition, running=op == "drop-running")
        elif op == "join":
            return bulkhead.join(partition, f"{partition}-{agent}")
        else:
            return bulkhead.leave(partition, f"{partition}-{agent}")
    except IllegalTransition:
        return None
    return True


@settings(max_examples=300, deadline=None)
@given(limits=st.lists(_limits, min_size=3, max_size=3), ops=st.lists(_op, max_size=120))
def test_random_operations_never_break_a_limit(
    limits: list[tuple[int, int]], ops: list[tuple[str, str, int]]
) -> None:
    # Given three partitions with random limits
    specs = [PartitionSpec(n, a, t) for n, (a, t) in zip(NAMES, limits, strict=True)]
    bulkhead = Bulkhead(specs)

    # When any operations are applied
    for op, partition, agent in ops:
        apply(bulkhead, op, partition, agent)

        # Then no partition ever holds more tasks or agents than it allows
        for spec, view in zip(specs, bulkhead.views(), strict=True):
            assert min(view.queued, view.running) >= 0
            assert view.queued + view.running <= spec.max_tasks
            assert view.agents <= spec.max_agents


@settings(max_examples=300, deadline=None)
@given(
    limits=st.lists(_limits, min_size=3, max_size=3),
    ops=st.lists(_op, max_size=120),
)
def test_one_partitions_load_never_changes_anothers_answers(
    limits: list[tuple[int, int]], ops: list[tuple[str, str, int]]
) -> None:
    # Given two identical bulkheads
    specs = [PartitionSpec(n, a, t) for n, (a, t) in zip(NAMES, limits, strict=True)]
    busy, quiet = Bulkhead(specs), Bulkhead(specs)

    # When "a" is hammered in one of them only, and both see the same other traffic
    for op, partition, agent in ops:
        busy_answer = apply(busy, op, partition, agent)
        for _ in range(3):
            apply(busy, "admit", "a", 0)
            apply(busy, "join", "a", agent)
        if partition == "a":
            continue
        quiet_answer = apply(quiet, op, partition, agent)

        # Then b and c answer exactly as they would without the flood
        assert busy_answer == quiet_answer
    assert busy.views()[1:] == quiet.views()[1:]
