"""The fold: a snapshot plus later events rebuilds exactly the state the events built."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc.core import events
from godel_grpc.core.records import TaskState
from godel_grpc.core.state import CoordinatorState


def registered(agent_id: str) -> event_pb2.Event:
    return events.agent_registered(
        event_pb2.AgentRegistered(agent_id=agent_id, name=agent_id, role="w", capacity=4)
    )


def history(steps: list[int], tasks: int) -> list[event_pb2.Event]:
    """A plausible event history driven by `steps`: each step moves one task forward."""
    out = [events.coordinator_started(1, "test"), registered("ag-1")]
    out.append(events.agent_connected("ag-1", False, 4))
    states = {}
    for index in range(tasks):
        task = task_pb2.Task(id=f"t-{index}", role="w", idempotency_key=f"k{index}")
        out.append(events.task_submitted(task))
        states[task.id] = ("queued", 0)
    for step in steps:
        task_id = f"t-{step % tasks}"
        state, attempt = states[task_id]
        attempt_id = f"a-{task_id}-{attempt}"
        if state == "queued":
            out.append(
                events.task_leased(task_id, f"a-{task_id}-{attempt + 1}", attempt + 1, "ag-1")
            )
            states[task_id] = ("running", attempt + 1)
        elif state == "running" and step % 3 == 0:
            out.append(events.task_succeeded(task_id, attempt_id, "ag-1", None))
            states[task_id] = ("done", attempt)
        elif state == "running" and step % 3 == 1:
            error = task_pb2.TaskError(code="X", retryable=True)
            out.append(events.task_attempt_failed(task_id, attempt_id, "ag-1", error, attempt >= 3))
            states[task_id] = ("done" if attempt >= 3 else "queued", attempt)
        elif state == "running":
            out.append(events.task_requeued(task_id, attempt_id, "ag-1", "lost", lost=True))
            states[task_id] = ("queued", attempt)
    for position, event in enumerate(out, start=1):
        event.id = position
    return out


def summary(state: CoordinatorState) -> object:
    """What a snapshot must preserve: work in progress, agents, keys and counts (ended
    tasks are a cache of the log and may differ)."""
    return (
        {
            t.id: (t.state, t.attempts, t.failures, t.attempt_id, t.agent_id)
            for t in state.tasks.values()
            if not t.terminal
        },
        {a.id: (a.name, a.role, a.capacity, a.in_flight) for a in state.agents.values()},
        dict(state.idempotency),
        state.epoch,
        {k: v for k, v in state.task_counts.items() if v},
    )


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.integers(0, 50), max_size=60), tasks=st.integers(1, 6), cut=st.integers(0, 80)
)
def test_snapshot_plus_tail_equals_full_replay(steps: list[int], tasks: int, cut: int) -> None:
    log = history(steps, tasks)
    cut = min(cut, len(log))
    full = CoordinatorState()
    for event in log:
        full.apply(event)
    head = CoordinatorState()
    for event in log[:cut]:
        head.apply(event)
    snapshot = event_pb2.CoordinatorSnapshot.FromString(head.to_snapshot().SerializeToString())
    resumed = CoordinatorState.from_snapshot(snapshot)
    for event in log[cut:]:
        resumed.apply(event)
    assert summary(resumed) == summary(full)


def test_ended_tasks_beyond_the_retention_leave_memory_but_not_the_counts() -> None:
    state = CoordinatorState(retention=2)
    for index in range(3):
        task_id = f"t-{index}"
        state.apply(
            events.task_submitted(task_pb2.Task(id=task_id, role="w", idempotency_key=f"k{index}"))
        )
        state.apply(events.task_leased(task_id, f"a-{index}", 1, "ag-1"))
        state.apply(events.task_succeeded(task_id, f"a-{index}", "ag-1", None))
    # Given three tasks that all succeeded, only the two most recent stay in memory
    assert sorted(state.tasks) == ["t-1", "t-2"]
    assert state.task_counts[TaskState.Value("STATE_SUCCEEDED")] == 3
    assert state.idempotency["k0"] == "t-0"


def test_a_retryable_failure_requeues_and_the_last_one_fails() -> None:
    state = CoordinatorState()
    for event in history([0, 1, 0, 1, 0, 1], tasks=1):
        state.apply(event)
    task = state.tasks["t-0"]
    assert task.state == TaskState.STATE_FAILED
    assert (task.attempts, task.failures) == (3, 3)
    assert state.agents["ag-1"].in_flight == 0
