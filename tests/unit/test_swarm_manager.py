"""The swarm manager folds events into swarms: sizes, task counts, decisions, and a
snapshot's history that rebuilds them."""

from __future__ import annotations

from godel_grpc._proto.godel.v1 import swarm_pb2, task_pb2
from godel_grpc.core import events
from godel_grpc.core.records import TaskRecord
from godel_grpc.core.swarms import SwarmManager
from godel_grpc.patterns.autoscale import LOAD, Observation


def _swarm() -> swarm_pb2.Swarm:
    swarm = swarm_pb2.Swarm(id="sw-1-1", name="crunch", min_agents=1, max_agents=5)
    swarm.scale_policy.cooldown = 30
    return swarm


def _task(task_id: str) -> task_pb2.Task:
    return task_pb2.Task(id=task_id, swarm="sw-1-1", title=task_id)


def _decision(from_agents: int, to_agents: int) -> swarm_pb2.SwarmScaleEvent:
    decision = swarm_pb2.SwarmScaleEvent(
        from_agents=from_agents, to_agents=to_agents, trigger=LOAD, metric_value=40
    )
    decision.time.FromSeconds(1000)
    return decision


def test_events_fold_into_size_counts_and_decisions() -> None:
    tasks: dict[str, TaskRecord] = {}
    manager = SwarmManager(tasks)
    log = [
        events.swarm_created(_swarm()),
        events.swarm_scaled("sw-1-1", _decision(1, 3)),
        events.swarm_agent_started("sw-1-1", "ag-a", "crunch-a"),
        events.swarm_agent_started("sw-1-1", "ag-b", "crunch-b"),
        events.swarm_agent_started("sw-1-1", "ag-c", "crunch-c"),
        events.swarm_agent_draining("sw-1-1", "ag-b", "scale down"),
        events.swarm_agent_stopped("sw-1-1", "ag-c", "process exited with code 1"),
        *(events.task_submitted(_task(f"t{i}")) for i in range(4)),
        events.task_leased("t0", "a1", 1, "ag-a"),
        events.task_leased("t1", "a2", 1, "ag-b"),
        events.task_succeeded("t1", "a2", "ag-b", None),
    ]
    for event in log:
        manager.observe(event)

    shown = manager.to_proto(manager.swarms["sw-1-1"])
    assert (shown.current_agents, shown.draining_agents, shown.desired_agents) == (1, 1, 3)
    assert list(shown.agent_ids) == ["ag-a"]
    assert (shown.queue_depth, shown.in_flight, shown.tasks_completed) == (2, 1, 1)
    assert [e.to_agents for e in shown.scale_events] == [3]
    assert manager.pools_of("ag-a") == ["swarm:sw-1-1"]
    assert manager.pools_of("ag-b") == []  # draining: no new work
    assert manager.pools_of("ag-x") is None
    # The recorded decision started the cooldown.
    autoscaler = manager.swarms["sw-1-1"].autoscaler
    assert autoscaler.evaluate(1010.0, Observation(100, 0, 1)) is None

    # A snapshot's history rebuilds the swarm, its members and its decisions.
    rebuilt = SwarmManager(tasks)
    for event in manager.history():
        rebuilt.observe(event)
    again = rebuilt.to_proto(rebuilt.swarms["sw-1-1"])
    assert (again.current_agents, again.draining_agents, again.desired_agents) == (1, 1, 3)
    assert [e.to_agents for e in again.scale_events] == [3]


def test_deleting_a_swarm_keeps_its_members_until_they_stop() -> None:
    manager = SwarmManager({})
    for event in (
        events.swarm_created(_swarm()),
        events.swarm_agent_started("sw-1-1", "ag-a", "crunch-a"),
        events.swarm_agent_draining("sw-1-1", "ag-a", "swarm deleted"),
        events.swarm_deleted("sw-1-1"),
    ):
        manager.observe(event)
    assert manager.swarms == {} and "ag-a" in manager.members
    assert manager.pools_of("ag-a") == []
    manager.observe(events.swarm_agent_stopped("sw-1-1", "ag-a", "drained"))
    assert manager.members == {}
