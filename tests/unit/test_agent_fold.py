"""The agent fold (live state and ReplayAgent share it), its snapshots, reading events
of older schema versions, and optimistic concurrency surfacing as ABORTED."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc.api.interceptor import _translate
from godel_grpc.core import agent_fold, events, upgrade
from godel_grpc.core.records import Agent
from godel_grpc.core.state import CoordinatorState
from godel_grpc.store.base import NO_STREAM, NewEvent, StoredEvent, WrongExpectedVersion
from godel_grpc.store.sqlite import SqliteEventStore

AGENT = "ag-1-1"


def registered() -> event_pb2.Event:
    return events.agent_registered(
        event_pb2.AgentRegistered(agent_id=AGENT, name="w", role="worker", capacity=2)
    )


def agent_event(step: tuple[str, int]) -> event_pb2.Event:
    """One of the agent's own events, as the coordinator builds them."""
    kind, task = step
    task_id = f"t-{task}"
    error = task_pb2.TaskError(code="X")
    return {
        "lease": lambda: events.task_leased(task_id, f"a-{task}", 1, AGENT),
        "succeed": lambda: events.task_succeeded(task_id, f"a-{task}", AGENT, None),
        "fail": lambda: events.task_attempt_failed(task_id, f"a-{task}", AGENT, error, True),
        "requeue": lambda: events.task_requeued(task_id, f"a-{task}", AGENT, "lost", True),
        "cancel": lambda: events.task_cancelled(task_id, "stop", AGENT),
        "connect": lambda: events.agent_connected(AGENT, True, 3),
        "disconnect": lambda: events.agent_disconnected(AGENT, "gone"),
        "circuit": lambda: events.agent_circuit_changed(AGENT, "CLOSED", "OPEN", "x"),
    }[kind]()


steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["lease", "succeed", "fail", "requeue", "cancel", "connect", "disconnect", "circuit"]
        ),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps, st.data())
def test_a_snapshot_taken_anywhere_folds_on_to_the_same_state(
    sequence: list[tuple[str, int]], data: st.DataObject
) -> None:
    history = [registered(), *(agent_event(step) for step in sequence)]
    for position, event in enumerate(history, start=1):
        event.id = position
    straight = None
    for event in history:
        straight = agent_fold.fold(straight, event)
    assert straight is not None
    cut = data.draw(st.integers(1, len(history)))
    resumed = None
    for event in history[:cut]:
        resumed = agent_fold.fold(resumed, event)
    assert resumed is not None
    resumed = agent_fold.from_snapshot(
        event_pb2.AgentSnapshot.FromString(agent_fold.to_snapshot(resumed).SerializeToString())
    )
    for event in history[cut:]:
        resumed = agent_fold.fold(resumed, event)
    assert agent_fold.to_snapshot(resumed) == agent_fold.to_snapshot(straight)
    assert straight.in_flight == len(straight.running)
    assert 0 <= straight.tasks_failed <= straight.tasks_completed
    assert straight.event_count == len(history) and straight.position == len(history)


def test_an_attempt_counts_once_and_only_for_the_agent_that_held_it() -> None:
    agent = agent_fold.fold(None, registered())
    assert agent is not None
    for step in [("lease", 1), ("lease", 2), ("succeed", 1), ("succeed", 1), ("fail", 3)]:
        agent_fold.apply(agent, agent_event(step))
    assert (agent.in_flight, agent.tasks_completed, agent.tasks_failed) == (1, 1, 0)
    agent_fold.apply(agent, agent_event(("fail", 2)))
    assert (agent.in_flight, agent.tasks_completed, agent.tasks_failed) == (0, 2, 1)
    agent_fold.apply(agent, agent_event(("connect", 0)))
    agent_fold.apply(agent, agent_event(("circuit", 0)))
    assert agent.state == Agent.STATE_READY and agent.circuit == "OPEN"


def stored(event: event_pb2.Event, position: int) -> StoredEvent:
    return StoredEvent(
        position, event.stream, 1, events.type_name(event), event.SerializeToString(), "", 0.0
    )


def test_an_event_of_an_older_schema_version_still_folds() -> None:
    # Given events recorded before events carried a version (schema_version 0)
    old = [registered(), events.agent_connected(AGENT, False, 2)]
    for event in old:
        event.schema_version = 0
    # When they are read back, they come out at today's version and fold as ever
    decoded = [upgrade.decode(stored(event, n)) for n, event in enumerate(old, start=1)]
    assert {e.schema_version for e in decoded} == {events.SCHEMA_VERSION}
    agent = None
    for event in decoded:
        agent = agent_fold.fold(agent, event)
    assert agent is not None and agent.state == Agent.STATE_READY and agent.capacity == 2


def test_upgrade_steps_run_in_order_and_newer_versions_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a next version that renamed a role (a made-up step, to show the chain)
    def rename(event: event_pb2.Event) -> None:
        if event.HasField("agent_registered"):
            event.agent_registered.role = event.agent_registered.role.upper()

    monkeypatch.setitem(upgrade.UPGRADES, 1, rename)
    old = registered()
    old.schema_version = 0
    assert upgrade.upgrade(old, target=2).agent_registered.role == "WORKER"
    newer = registered()
    newer.schema_version = events.SCHEMA_VERSION + 1
    with pytest.raises(upgrade.UnknownSchemaVersion):
        upgrade.upgrade(newer)


async def test_a_conflicting_writer_gets_aborted_with_the_versions(tmp_path: Path) -> None:
    # Given a stream another writer created first
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        await store.append([NewEvent("agent/x", "agent.registered", b"", "x", NO_STREAM)])
        # When a second writer appends expecting the stream not to exist
        with pytest.raises(WrongExpectedVersion) as conflict:
            await store.append([NewEvent("agent/x", "agent.registered", b"", "x", NO_STREAM)])
    finally:
        await store.close()
    # Then at the API boundary that is ABORTED, naming the stream and both versions
    error = _translate("/godel.v1.Test/Append", conflict.value)
    status = error.to_status()
    assert error.code == grpc.StatusCode.ABORTED
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "WRONG_EXPECTED_VERSION"
    assert dict(info.metadata) == {
        "stream": "agent/x",
        "expected_version": "0",
        "actual_version": "1",
    }


def test_the_coordinator_snapshot_keeps_agents_counters() -> None:
    # Given a coordinator state where an agent ran tasks, one of them still running
    state = CoordinatorState()
    state.apply(registered())
    for n in range(3):
        submitted = events.task_submitted_new(f"t-{n}")
        submitted.task_submitted.task.role = "worker"
        state.apply(submitted)
    for step in [("connect", 0), ("lease", 0), ("lease", 1), ("lease", 2)]:
        state.apply(agent_event(step))
    state.apply(agent_event(("succeed", 0)))
    state.apply(agent_event(("fail", 1)))
    before = state.agents[AGENT].to_proto()
    assert (before.in_flight, before.tasks_completed, before.tasks_failed) == (1, 2, 1)
    # When it is rebuilt from its snapshot (as on a restart)
    snapshot = event_pb2.CoordinatorSnapshot.FromString(state.to_snapshot().SerializeToString())
    rebuilt = CoordinatorState.from_snapshot(snapshot)
    # Then the agent is as it was, counters included, and goes on folding alike
    assert rebuilt.agents[AGENT].to_proto() == before
    rebuilt.apply(agent_event(("succeed", 2)))
    assert rebuilt.agents[AGENT].in_flight == 0


def _reflex_event(step: tuple[str, int]) -> event_pb2.Event:
    """A reflex event of agent "ag-1": a memory write or delete, or a rating."""
    kind, n = step
    if kind == "write":
        return events.agent_memory_written("ag-1", f"k{n % 3}", struct_pb2.Value(number_value=n))
    if kind == "delete":
        return events.agent_memory_written("ag-1", f"k{n % 3}", None)
    event = events.agent_feedback_submitted("ag-1", f"t-{n}", n % 6, "")
    event.agent_feedback_submitted.scored = n % 2 == 0
    event.agent_feedback_submitted.score = (n % 6) / 2
    return event


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["write", "delete", "rate"]), st.integers(0, 50)), max_size=30
    ),
    cut=st.integers(0, 30),
)
def test_replayed_reflex_state_is_the_same_from_a_snapshot(
    steps: list[tuple[str, int]], cut: int
) -> None:
    """Folding every reflex event equals folding up to a snapshot, restoring it, and
    folding the rest; and it matches a plain model of scores and memory."""
    stream = [_reflex_event(step) for step in steps]
    whole = agent_fold.ReflexState()
    for event in stream:
        whole.apply(event)
    cut = min(cut, len(stream))
    before = agent_fold.ReflexState()
    for event in stream[:cut]:
        before.apply(event)
    agent = agent_fold.register(registered())
    snapshot = agent_fold.to_snapshot(agent, before)
    resumed = agent_fold.ReflexState.from_snapshot(
        event_pb2.AgentSnapshot.FromString(snapshot.SerializeToString())
    )
    for event in stream[cut:]:
        resumed.apply(event)
    assert resumed.score == whole.score
    assert resumed.memory_struct() == whole.memory_struct()
    # The model: last scored rating's score; last write per key unless deleted after.
    score, memory = 0.0, {}
    for kind, n in steps:
        if kind == "write":
            memory[f"k{n % 3}"] = float(n)
        elif kind == "delete":
            memory.pop(f"k{n % 3}", None)
        elif n % 2 == 0:
            score = (n % 6) / 2
    assert whole.score == score
    assert dict(whole.memory_struct().items()) == memory
