"""The core's reflex manager: config, feedback and memory folded from events, and a
snapshot's history that rebuilds the same state."""

from __future__ import annotations

from google.protobuf import struct_pb2

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_pb2, event_pb2
from godel_grpc.core import events
from godel_grpc.core.records import AgentRecord
from godel_grpc.core.reflex import ReflexManager
from godel_grpc.patterns.reflex import MAX_VALUE_BYTES


def hello(memory: str = "persistent", name: str = "w-1") -> link_pb2.AgentHello:
    return link_pb2.AgentHello(
        name=name,
        role="w",
        reflex=agent_pb2.ReflexConfig(
            enabled=True, memory=memory, feedback_loop=True, adaptation_rate=0.5
        ),
    )


def value(number: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=number)


def manager_with_agent(memory: str = "persistent") -> tuple[ReflexManager, dict[str, AgentRecord]]:
    agents = {"a": AgentRecord("a", "w-1", "w", 0.0)}
    manager = ReflexManager(agents)
    for event in [*manager.configure("a", hello(memory)), events.agent_connected("a", False, 1)]:
        manager.observe(event)
    return manager, agents


def apply(manager: ReflexManager, batch: list[event_pb2.Event]) -> None:
    for event in batch:
        manager.observe(event)


def test_feedback_folds_into_score_lessons_and_the_record() -> None:
    manager, agents = manager_with_agent()
    for rating, comment in [(4.0, "good"), (2.0, "missed a case")]:
        manager.observe(manager.feedback("a", "t-1", rating, comment))
    assert manager.preference("a") == 3.0  # 4, then 0.5*4 + 0.5*2
    status = agents["a"].reflex
    assert status is not None and status.feedback_count == 2
    assert list(status.lessons) == ["good", "missed a case"]
    assignment = link_pb2.TaskAssignment(task_id="t-2")
    manager.decorate("a", assignment)
    assert (assignment.score, assignment.feedback_count) == (3.0, 2)


def test_feedback_without_a_loop_is_counted_but_not_scored() -> None:
    agents = {"a": AgentRecord("a", "w-1", "w", 0.0)}
    manager = ReflexManager(agents)
    event = manager.feedback("a", "", 1.0, "meh")
    manager.observe(event)
    assert not event.agent_feedback_submitted.scored
    assert manager.preference("a") is None
    assignment = link_pb2.TaskAssignment()
    manager.decorate("a", assignment)
    assert assignment.feedback_count == 0 and not assignment.lessons


def test_persistent_memory_is_events_and_survives_reconnects() -> None:
    manager, agents = manager_with_agent()
    writes = [
        link_pb2.MemoryWrite(key="n", value=value(1)),
        link_pb2.MemoryWrite(key="big", value=struct_pb2.Value(string_value="x" * MAX_VALUE_BYTES)),
        link_pb2.MemoryWrite(key="gone", value=value(2)),
        link_pb2.MemoryWrite(key="gone", delete=True),
    ]
    batch = manager.write_memory("a", writes)
    # The oversized value is refused; the rest are events, applied when folded
    assert [e.agent_memory_written.key for e in batch] == ["n", "gone", "gone"]
    assert manager.memory_struct("a") == struct_pb2.Struct()
    apply(manager, batch)
    apply(manager, [events.agent_disconnected("a", "x"), events.agent_connected("a", True, 1)])
    assert dict(manager.memory_struct("a").fields) == {"n": value(1)}
    assert agents["a"].reflex is not None and agents["a"].reflex.memory_keys == 1


def test_session_memory_is_never_an_event_and_ends_with_the_link() -> None:
    manager, _ = manager_with_agent("session")
    assert manager.write_memory("a", [link_pb2.MemoryWrite(key="n", value=value(1))]) == []
    assert dict(manager.memory_struct("a").fields) == {"n": value(1)}
    manager.observe(events.agent_disconnected("a", "stream closed"))
    assert manager.memory_struct("a") == struct_pb2.Struct()
    assert manager.identity_for(hello("session"), connected=()) is None


def test_history_rebuilds_the_same_state() -> None:
    manager, agents = manager_with_agent()
    apply(manager, manager.write_memory("a", [link_pb2.MemoryWrite(key="k", value=value(3))]))
    comments = ["one", "", "two", "three", "four", "five", "six", "", " "]
    for index, comment in enumerate(comments):
        manager.observe(manager.feedback("a", "", index % 6, comment))
    rebuilt_agents = {"a": AgentRecord("a", "w-1", "w", 0.0)}
    rebuilt = ReflexManager(rebuilt_agents)
    apply(rebuilt, manager.history())
    assert rebuilt_agents["a"].reflex == agents["a"].reflex
    assert rebuilt.memory_struct("a") == manager.memory_struct("a")
    assert rebuilt.preference("a") == manager.preference("a")
    assert rebuilt.identity_for(hello(), connected=()) == "a"
    assert list(agents["a"].reflex.lessons) == ["two", "three", "four", "five", "six"]  # type: ignore[union-attr]
    assert len(manager.history()) <= 1 + 5 + 2 + 1  # config, feedback, one memory key


def test_a_connected_agent_is_not_resumed_by_name() -> None:
    manager, _ = manager_with_agent()
    assert manager.identity_for(hello(), connected={"a"}) is None
    assert manager.identity_for(hello(name="other"), connected=()) is None


def test_a_hello_without_reflex_keeps_the_recorded_config() -> None:
    manager, _ = manager_with_agent()
    assert manager.configure("a", link_pb2.AgentHello(name="w-1", role="w")) == []
    assert manager.configure("a", hello()) == []
    assert len(manager.configure("a", hello("session"))) == 1
