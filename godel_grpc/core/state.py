"""The coordinator's state as a fold over its events.

`apply` is the only way tasks and agents change. Live commands build events, apply them
and journal them; a restart loads the latest snapshot and applies the later events with
the same function, so recovered state is the live state by construction.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc.core import agent_fold
from godel_grpc.core.records import AgentRecord, Task, TaskRecord


class EventObserver(Protocol):
    """Something that folds the coordinator's events after the core does."""

    def observe(self, event: event_pb2.Event) -> None:
        """Folds one event."""


DEFAULT_RETENTION = 100_000
"""Ended tasks kept in memory for fast queries; older ones are read back from the log."""


class CoordinatorState:
    """Tasks, agents and the indexes the API needs, folded from events.

    Every task that has not ended is in `tasks`. Ended tasks stay there only until
    `retention` newer ones have ended: memory and snapshots stay bounded by the work in
    progress, not by the service's age, and queries read older tasks from the log.
    """

    def __init__(self, retention: int = DEFAULT_RETENTION) -> None:
        self.retention = retention
        self.observers: list[EventObserver] = []
        """Pattern managers folding the same events after the core."""
        self._ended: deque[str] = deque()
        self.tasks: dict[str, TaskRecord] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.idempotency: dict[str, str] = {}
        self.agents_by_token: dict[str, str] = {}
        self.epoch = 0
        self.position = 0
        self.task_counts: Counter[int] = Counter()
        self.agent_listeners: list[Callable[[AgentRecord | None], None]] = []
        """Called with an agent's record after each of its events is folded, and with
        None when the coordinator stops (WatchAgents)."""

    # -- folding ---------------------------------------------------------------------

    def apply(self, event: event_pb2.Event) -> None:
        """Folds one event into the state."""
        kind = event.WhichOneof("payload")
        handler = _HANDLERS.get(kind or "")
        if handler is not None:
            handler(self, event)
        if event.agent_id:
            agent = self.agents.get(event.agent_id)
            if agent is not None:
                agent_fold.apply(agent, event)
                for listener in self.agent_listeners:
                    listener(agent)
        for observer in self.observers:
            observer.observe(event)
        if event.id:
            self.position = event.id

    def _set_task_state(self, task: TaskRecord, state: int) -> None:
        self.task_counts[task.state] -= 1
        self.task_counts[state] += 1
        task.state = state  # type: ignore[assignment]
        if state in _ENDED:
            self._ended.append(task.id)
            while len(self._ended) > self.retention:
                old = self._ended.popleft()
                evicted = self.tasks.get(old)
                if evicted is not None and evicted.state in _ENDED:
                    del self.tasks[old]

    def _on_coordinator_started(self, event: event_pb2.Event) -> None:
        self.epoch = max(self.epoch, event.coordinator_started.epoch)

    def _on_task_submitted(self, event: event_pb2.Event) -> None:
        spec = event.task_submitted.task
        task = TaskRecord(spec, event.time.ToNanoseconds() / 1e9)
        self.tasks[task.id] = task
        self.task_counts[task.state] += 1
        if spec.idempotency_key and not spec.HasField("owner"):
            # Pattern-owned tasks carry their pattern's key for agents; the pattern,
            # not this index, decides when to run one again.
            self.idempotency[spec.idempotency_key] = task.id

    def _on_task_leased(self, event: event_pb2.Event) -> None:
        leased = event.task_leased
        task = self.tasks.get(leased.task_id)
        if task is None:  # ended and evicted; nothing left to change
            return
        self._set_task_state(task, Task.STATE_RUNNING)
        task.attempts = leased.attempt
        task.attempt_id = leased.attempt_id
        task.agent_id = leased.agent_id
        task.start_time = event.time.ToNanoseconds() / 1e9
        task.progress = None

    def _on_task_succeeded(self, event: event_pb2.Event) -> None:
        succeeded = event.task_succeeded
        task = self.tasks.get(succeeded.task_id)
        if task is None:  # ended and evicted; nothing left to change
            return
        self._set_task_state(task, Task.STATE_SUCCEEDED)
        task.output = succeeded.output
        task.end_time = event.time.ToNanoseconds() / 1e9

    def _on_task_attempt_failed(self, event: event_pb2.Event) -> None:
        failed = event.task_attempt_failed
        task = self.tasks.get(failed.task_id)
        if task is None:  # ended and evicted; nothing left to change
            return
        task.failures += 1
        task.error = failed.error
        if failed.final:
            self._set_task_state(task, Task.STATE_FAILED)
            task.end_time = event.time.ToNanoseconds() / 1e9
        else:
            self._set_task_state(task, Task.STATE_QUEUED)

    def _on_task_requeued(self, event: event_pb2.Event) -> None:
        requeued = event.task_requeued
        task = self.tasks.get(requeued.task_id)
        if task is None:  # ended and evicted; nothing left to change
            return
        if requeued.lost:
            task.failures += 1
        self._set_task_state(task, Task.STATE_QUEUED)

    def _on_task_cancelled(self, event: event_pb2.Event) -> None:
        cancelled = event.task_cancelled
        task = self.tasks.get(cancelled.task_id)
        if task is None:  # ended and evicted; nothing left to change
            return
        self._set_task_state(task, Task.STATE_CANCELLED)
        task.error = task_pb2.TaskError(
            code=cancelled.code or "CANCELLED", message=cancelled.reason
        )
        task.end_time = event.time.ToNanoseconds() / 1e9

    def _on_agent_registered(self, event: event_pb2.Event) -> None:
        # Agents' own fields (state, counters, circuit) are folded by `agent_fold` in
        # `apply`, the function ReplayAgent uses too.
        self._add_agent(agent_fold.register(event))

    def _add_agent(self, agent: AgentRecord) -> None:
        self.agents[agent.id] = agent
        if agent.resume_token_sha256:
            self.agents_by_token[agent.resume_token_sha256] = agent.id

    # -- snapshots -------------------------------------------------------------------

    def to_snapshot(self) -> event_pb2.CoordinatorSnapshot:
        """Everything needed to rebuild this state without the events before `position`:
        the tasks still in progress, agents, idempotency keys and counts."""
        snapshot = event_pb2.CoordinatorSnapshot(
            position=self.position,
            epoch=self.epoch,
            idempotency_keys=self.idempotency,
            task_counts={Task.State.Name(s): n for s, n in self.task_counts.items() if n},  # type: ignore[arg-type]
        )
        snapshot.tasks.extend(task.to_proto() for task in self.tasks.values() if not task.terminal)
        snapshot.agent_states.extend(agent_fold.to_snapshot(a) for a in self.agents.values())
        for agent in self.agents.values():
            snapshot.agents.add(
                agent_id=agent.id,
                name=agent.name,
                role=agent.role,
                actions=agent.actions,
                queues=agent.queues,
                capacity=agent.capacity,
                labels=agent.labels,
                resume_token_sha256=agent.resume_token_sha256,
                version=agent.version,
            )
        return snapshot

    @classmethod
    def from_snapshot(
        cls, snapshot: event_pb2.CoordinatorSnapshot, retention: int = DEFAULT_RETENTION
    ) -> CoordinatorState:
        """Rebuilds the state a snapshot recorded."""
        state = cls(retention)
        state.position = snapshot.position
        state.epoch = snapshot.epoch
        state.idempotency.update(snapshot.idempotency_keys)
        for name, count in snapshot.task_counts.items():
            state.task_counts[Task.State.Value(name)] = count
        for folded in snapshot.agent_states:
            state._add_agent(agent_fold.from_snapshot(folded))
        if not snapshot.agent_states:  # written before agents' states were kept
            for registered in snapshot.agents:
                event = event_pb2.Event()
                event.agent_registered.CopyFrom(registered)
                state._on_agent_registered(event)
        for proto in snapshot.tasks:
            spec = task_pb2.Task()
            spec.CopyFrom(proto)
            for name in _TASK_STATE_FIELDS:
                spec.ClearField(name)  # type: ignore[arg-type]
            task = TaskRecord(spec, proto.create_time.ToNanoseconds() / 1e9)
            task.state = proto.state
            task.attempts = proto.attempts
            task.agent_id = proto.agent_id
            task.attempt_id = proto.attempt_id
            task.output = proto.output if proto.HasField("output") else None
            task.error = proto.error if proto.HasField("error") else None
            task.start_time = proto.start_time.ToNanoseconds() / 1e9
            task.end_time = proto.end_time.ToNanoseconds() / 1e9
            task.failures = proto.failed_attempts
            state.tasks[task.id] = task
            agent = state.agents.get(task.agent_id)
            if agent is not None and task.state == Task.STATE_RUNNING and not snapshot.agent_states:
                agent.running.add(task.id)
                agent.in_flight = len(agent.running)
        return state


_ENDED = frozenset({Task.STATE_SUCCEEDED, Task.STATE_FAILED, Task.STATE_CANCELLED})

_TASK_STATE_FIELDS = (
    "state",
    "attempts",
    "agent_id",
    "attempt_id",
    "output",
    "error",
    "progress",
    "create_time",
    "start_time",
    "end_time",
    "failed_attempts",
)

_HANDLERS = {
    "coordinator_started": CoordinatorState._on_coordinator_started,
    "task_submitted": CoordinatorState._on_task_submitted,
    "task_leased": CoordinatorState._on_task_leased,
    "task_succeeded": CoordinatorState._on_task_succeeded,
    "task_attempt_failed": CoordinatorState._on_task_attempt_failed,
    "task_requeued": CoordinatorState._on_task_requeued,
    "task_cancelled": CoordinatorState._on_task_cancelled,
    "agent_registered": CoordinatorState._on_agent_registered,
}
