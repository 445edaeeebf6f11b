"""The scheduler's leasing policy: priorities, capacity, rotation, readiness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.core.scheduler import GATHER_SECONDS, Scheduler, gather_delay


def always_ready(_: str) -> bool:
    return True


def test_higher_priority_then_older_first() -> None:
    # Given one agent with one free slot and three queued tasks
    scheduler = Scheduler()
    scheduler.enqueue("old-normal", "role:w", 2)
    scheduler.enqueue("critical", "role:w", 0)
    scheduler.enqueue("new-normal", "role:w", 2)
    scheduler.add_agent("a", ["role:w"], free=1)
    # When leasing, then only the critical one goes out
    assert scheduler.assign(always_ready) == [("critical", "a")]
    # And after the slot comes back, the older of the two normal tasks
    scheduler.release("a")
    assert scheduler.assign(always_ready) == [("old-normal", "a")]


def test_never_more_than_free_slots() -> None:
    scheduler = Scheduler()
    for index in range(10):
        scheduler.enqueue(f"t{index}", "role:w", 2)
    scheduler.add_agent("a", ["role:w"], free=3)
    scheduler.add_agent("b", ["role:w"], free=2)
    leases = scheduler.assign(always_ready)
    assert len(leases) == 5
    assert sum(1 for _, agent in leases if agent == "a") == 3
    assert scheduler.assign(always_ready) == []


def test_rotates_between_agents() -> None:
    scheduler = Scheduler()
    scheduler.add_agent("a", ["role:w"], free=10)
    scheduler.add_agent("b", ["role:w"], free=10)
    for index in range(6):
        scheduler.enqueue(f"t{index}", "role:w", 2)
    agents = [agent for _, agent in scheduler.assign(always_ready)]
    assert agents.count("a") == 3 and agents.count("b") == 3


def test_tasks_only_go_to_agents_of_their_pool() -> None:
    scheduler = Scheduler()
    scheduler.add_agent("builder", ["role:builder", "action:compile"], free=5)
    scheduler.add_agent("tester", ["role:tester"], free=5)
    scheduler.enqueue("c", "action:compile", 2)
    scheduler.enqueue("t", "role:tester", 2)
    scheduler.enqueue("nobody", "role:deployer", 2)
    assert sorted(scheduler.assign(always_ready)) == [("c", "builder"), ("t", "tester")]


def test_not_ready_tasks_are_dropped_not_leased() -> None:
    scheduler = Scheduler()
    scheduler.add_agent("a", ["role:w"], free=5)
    scheduler.enqueue("cancelled", "role:w", 0)
    scheduler.enqueue("live", "role:w", 2)
    assert scheduler.assign(lambda task: task != "cancelled") == [("live", "a")]
    assert scheduler.queued("role:w") == 0


def test_removed_agent_gets_nothing() -> None:
    scheduler = Scheduler()
    scheduler.add_agent("a", ["role:w"], free=5)
    scheduler.remove_agent("a")
    scheduler.enqueue("t", "role:w", 2)
    assert scheduler.assign(always_ready) == []
    assert scheduler.queued("role:w") == 1


@settings(max_examples=200, deadline=None)
@given(
    capacities=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    priorities=st.lists(st.integers(0, 3), max_size=40),
    releases=st.lists(st.integers(0, 4), max_size=20),
)
def test_model_capacity_and_order(
    capacities: list[int], priorities: list[int], releases: list[int]
) -> None:
    """For any fleet and queue: no agent exceeds its capacity, every task is leased at most
    once, and leases come out in (priority, age) order."""
    scheduler = Scheduler()
    for index, capacity in enumerate(capacities):
        scheduler.add_agent(f"a{index}", ["role:w"], free=capacity)
    for index, rank in enumerate(priorities):
        scheduler.enqueue(f"t{index}", "role:w", rank)
    held = dict.fromkeys((f"a{i}" for i in range(len(capacities))), 0)
    leased: list[str] = []

    def lease_round() -> None:
        for task, agent_id in scheduler.assign(always_ready):
            held[agent_id] += 1
            leased.append(task)

    lease_round()
    for agent_index in releases:
        agent = f"a{agent_index % len(capacities)}"
        if held[agent] > 0:
            scheduler.release(agent)
            held[agent] -= 1
        lease_round()
    assert len(leased) == len(set(leased))
    for index, capacity in enumerate(capacities):
        assert held[f"a{index}"] <= capacity
    order = sorted(range(len(priorities)), key=lambda i: (priorities[i], i))
    assert leased == [f"t{i}" for i in order[: len(leased)]]


def test_an_agent_that_may_not_take_work_is_skipped() -> None:
    # Given two agents, one whose breaker refuses work
    scheduler = Scheduler()
    scheduler.add_agent("open", ["role:w"], free=5)
    scheduler.add_agent("closed", ["role:w"], free=5)
    for index in range(3):
        scheduler.enqueue(f"t{index}", "role:w", 2)
    asked: list[str] = []

    def may_take(agent: str) -> bool:
        asked.append(agent)
        return agent == "closed"

    # Then every task goes to the other agent, and nothing waits for the refusing one
    assert [a for _, a in scheduler.assign(always_ready, may_take)] == ["closed"] * 3
    # And the question is asked only of agents with a free slot, once per lease tried
    assert set(asked) == {"open", "closed"}


# -- reflex preference -----------------------------------------------------------------


def test_unscored_agents_rotate_as_before_even_with_a_seeded_draw() -> None:
    # Given two agents without scores, the draw is never asked
    def never() -> float:
        raise AssertionError("no agent has a score: no draw")

    scheduler = Scheduler(uniform=never)
    for index in range(4):
        scheduler.enqueue(f"t{index}", "role:w", 2)
    scheduler.add_agent("a", ["role:w"], free=10)
    scheduler.add_agent("b", ["role:w"], free=10)
    assert [agent for _, agent in scheduler.assign(always_ready)] == ["a", "b", "a", "b"]


def test_scored_agents_are_drawn_by_score_and_a_refusal_draws_again() -> None:
    # Given a draw fixed at the bottom of the range: the first candidate wins it
    scheduler = Scheduler(uniform=lambda: 0.0)
    scheduler.add_agent("low", ["role:w"], free=5)
    scheduler.add_agent("high", ["role:w"], free=5)
    scheduler.set_score("high", 5.0)
    scheduler.set_score("low", 1.0)
    scheduler.enqueue("t1", "role:w", 2)
    assert scheduler.assign(always_ready) == [("t1", "low")]
    # When the drawn agent may not take work (its breaker), the other one gets it
    scheduler.enqueue("t2", "role:w", 2)
    assert scheduler.assign(always_ready, lambda agent: agent != "low") == [("t2", "high")]
    # And a full agent is never drawn
    scheduler = Scheduler(uniform=lambda: 0.0)
    scheduler.add_agent("low", ["role:w"], free=0)
    scheduler.add_agent("high", ["role:w"], free=1)
    scheduler.set_score("low", 1.0)
    scheduler.enqueue("t3", "role:w", 2)
    assert scheduler.assign(always_ready) == [("t3", "high")]


def test_clearing_a_score_restores_rotation() -> None:
    scheduler = Scheduler(uniform=lambda: 0.0)
    scheduler.add_agent("a", ["role:w"], free=10)
    scheduler.add_agent("b", ["role:w"], free=10)
    scheduler.set_score("b", 5.0)
    scheduler.set_score("b", None)
    for index in range(2):
        scheduler.enqueue(f"t{index}", "role:w", 2)
    assert [agent for _, agent in scheduler.assign(always_ready)] == ["a", "b"]


def test_a_score_survives_a_change_of_the_agents_pools() -> None:
    # Given two agents, the scored one second in rotation order, and a draw near the
    # top of the range (which lands on the scored agent's larger weight)
    scheduler = Scheduler(uniform=lambda: 0.99)
    scheduler.add_agent("plain", ["role:w"], free=5)
    scheduler.add_agent("scored", ["role:w"], free=5)
    scheduler.set_score("scored", 5.0)
    # When the scored agent's pools change (it joined a queue)
    scheduler.add_agent("scored", ["role:w", "queue:q"], free=5)
    # Then it is still drawn by its score, not skipped by plain rotation
    scheduler.enqueue("t0", "role:w", 2)
    assert scheduler.assign(always_ready) == [("t0", "scored")]


def test_a_round_waits_to_gather_work_only_while_the_fleet_is_busy() -> None:
    # A lone task, or a fleet running up to two tasks per agent, is leased at once;
    assert gather_delay(running=0, agents=0) == 0.0
    assert gather_delay(running=1, agents=1) == 0.0
    assert gather_delay(running=8, agents=4) == 0.0
    # beyond that, a round waits to lease what arrives meanwhile in the same messages.
    assert gather_delay(running=9, agents=4) == GATHER_SECONDS
    assert gather_delay(running=1, agents=0) == GATHER_SECONDS
