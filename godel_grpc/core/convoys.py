"""Convoys over the core: each convoy node runs as a task owned by its convoy.

The dependency rules live in `patterns.convoy` (pure policy); this module keeps one
`ConvoyRun` per convoy, feeds it the events of its tasks, turns its decisions into task
actions, and shows the result as `godel.v1.Convoy`. It never talks to agents or storage:
the coordinator carries out its actions and records everything as events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import convoy_pb2, event_pb2, task_pb2, task_service_pb2
from godel_grpc.core.pattern_host import (
    CancelOwned,
    PatternAction,
    SubmitOwned,
    count_states,
    in_seen_order,
)
from godel_grpc.core.records import TaskRecord
from godel_grpc.patterns import convoy as policy

PATTERN = "convoy"

_CONVOY_STATES = {
    policy.ConvoyState.PENDING: convoy_pb2.Convoy.STATE_PENDING,
    policy.ConvoyState.RUNNING: convoy_pb2.Convoy.STATE_RUNNING,
    policy.ConvoyState.SUCCEEDED: convoy_pb2.Convoy.STATE_SUCCEEDED,
    policy.ConvoyState.FAILED: convoy_pb2.Convoy.STATE_FAILED,
    policy.ConvoyState.CANCELLED: convoy_pb2.Convoy.STATE_CANCELLED,
}
_NODE_STATES = {
    policy.NodeState.PENDING: convoy_pb2.ConvoyNode.STATE_PENDING,
    policy.NodeState.RUNNING: convoy_pb2.ConvoyNode.STATE_RUNNING,
    policy.NodeState.SUCCEEDED: convoy_pb2.ConvoyNode.STATE_SUCCEEDED,
    policy.NodeState.FAILED: convoy_pb2.ConvoyNode.STATE_FAILED,
    policy.NodeState.CANCELLED: convoy_pb2.ConvoyNode.STATE_CANCELLED,
}


def policy_nodes(nodes: Sequence[convoy_pb2.ConvoyNode]) -> list[policy.ConvoyNode]:
    """The policy's view of the API's nodes."""
    return [
        policy.ConvoyNode(
            name=node.name, role=node.role, task=node.task, depends_on=tuple(node.depends_on)
        )
        for node in nodes
    ]


@dataclass
class ConvoyRecord:
    """One convoy: its definition, its run, and the tasks of its nodes."""

    convoy: convoy_pb2.Convoy
    run: policy.ConvoyRun
    node_tasks: dict[str, str] = field(default_factory=dict)
    history: list[tuple[int, event_pb2.Event]] = field(default_factory=list)
    """(order seen, event): live events have no log position yet, so the manager numbers
    what it observes to keep snapshots in log order."""
    start_time: float = 0.0
    end_time: float = 0.0
    watchers: set[asyncio.Event] = field(default_factory=set)
    """One event per watcher, set whenever the convoy or one of its nodes changes."""

    @property
    def ended(self) -> bool:
        return self.run.ended is not None


class ConvoyManager:
    """Every convoy the coordinator knows, folded from events."""

    def __init__(self, tasks: dict[str, TaskRecord]) -> None:
        self._tasks = tasks
        self.convoys: dict[str, ConvoyRecord] = {}
        self._owner_of: dict[str, tuple[str, str]] = {}
        self._actions: list[PatternAction] = []
        self._seen = 0

    # -- folding ---------------------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        if not self.convoys and not event.HasField("convoy_created"):
            return  # the common case on the task hot path: nothing to fold into
        self._seen += 1
        kind = event.WhichOneof("payload")
        if kind == "convoy_created":
            self._on_created(event)
        elif kind == "convoy_started":
            self._on_started(event)
        elif kind == "convoy_cancelled":
            record = self._record(event.convoy_cancelled.convoy_id, event)
            if record is not None and not record.ended:
                self._follow(record, record.run.cancel(event.convoy_cancelled.reason), event)
        elif kind == "convoy_deleted":
            record = self.convoys.pop(event.convoy_deleted.convoy_id, None)
            if record is not None:
                for task_id in record.node_tasks.values():
                    self._owner_of.pop(task_id, None)
        elif kind == "task_submitted":
            owner = event.task_submitted.task.owner
            if owner.pattern == PATTERN:
                record = self._record(owner.resource_id, event)
                if record is not None:
                    task_id = event.task_submitted.task.id
                    record.node_tasks[owner.part] = task_id
                    self._owner_of[task_id] = (owner.resource_id, owner.part)
        elif kind in _TASK_ENDINGS:
            self._on_task_event(kind, event)

    def _record(self, convoy_id: str, event: event_pb2.Event) -> ConvoyRecord | None:
        record = self.convoys.get(convoy_id)
        if record is not None:
            record.history.append((self._seen, event))
            for changed in record.watchers:
                changed.set()
        return record

    def _on_created(self, event: event_pb2.Event) -> None:
        convoy = event.convoy_created.convoy
        record = ConvoyRecord(convoy, policy.ConvoyRun(policy_nodes(convoy.agents)))
        record.history.append((self._seen, event))
        self.convoys[convoy.id] = record

    def _on_started(self, event: event_pb2.Event) -> None:
        record = self._record(event.convoy_started.convoy_id, event)
        if record is not None and record.run.state is policy.ConvoyState.PENDING:
            record.start_time = event.time.ToNanoseconds() / 1e9
            self._follow(record, record.run.start(), event)

    def _on_task_event(self, kind: str, event: event_pb2.Event) -> None:
        payload = getattr(event, kind)
        owner = self._owner_of.get(payload.task_id)
        if owner is None:
            return
        record = self._record(owner[0], event)
        if record is None or record.node_tasks.get(owner[1]) != payload.task_id:
            return
        if record.run.node_states.get(owner[1]) is not policy.NodeState.RUNNING:
            return  # cancelled meanwhile: a late ending changes nothing
        if kind == "task_succeeded":
            output = json_format.MessageToDict(payload.output)
            self._follow(record, record.run.node_succeeded(owner[1], output), event)
        elif kind == "task_attempt_failed":
            if payload.final:
                reason = payload.error.message or payload.error.code
                self._follow(record, record.run.node_failed(owner[1], reason), event)
        else:  # the node's task was cancelled on its own
            reason = f"its task was cancelled: {payload.reason}"
            self._follow(record, record.run.node_failed(owner[1], reason), event)

    def _follow(
        self,
        record: ConvoyRecord,
        decisions: Sequence[policy.ConvoyDecision],
        event: event_pb2.Event,
    ) -> None:
        for decision in decisions:
            if isinstance(decision, policy.Dispatch):
                self._actions.append(self._submit(record, decision))
            elif isinstance(decision, policy.CancelNode):
                task_id = record.node_tasks.get(decision.node)
                task = self._tasks.get(task_id or "")
                if task is not None and not task.terminal:
                    self._actions.append(CancelOwned(task.id, decision.reason))
            else:
                record.end_time = event.time.ToNanoseconds() / 1e9

    def _submit(self, record: ConvoyRecord, dispatch: policy.Dispatch) -> SubmitOwned:
        node = next(n for n in record.convoy.agents if (n.name or n.role) == dispatch.node)
        request = task_service_pb2.SubmitTaskRequest(
            title=node.task, role=node.role, max_attempts=node.max_attempts
        )
        if node.HasField("timeout"):
            request.timeout.CopyFrom(node.timeout)
        payload: dict[str, object] = {}
        if node.HasField("payload"):
            payload.update(json_format.MessageToDict(node.payload))
        payload.update(
            task=node.task,
            convoy={"id": record.convoy.id, "name": record.convoy.name},
            node=dispatch.node,
            dependencies=dict(dispatch.inputs),
        )
        request.payload.update(payload)  # type: ignore[arg-type]
        request.idempotency_key = f"{record.convoy.id}:{dispatch.node}"
        owner = task_pb2.TaskOwner(
            pattern=PATTERN, resource_id=record.convoy.id, part=dispatch.node, round=1
        )
        return SubmitOwned(request, owner)

    # -- the coordinator's side --------------------------------------------------------

    def take_actions(self) -> list[PatternAction]:
        actions, self._actions = self._actions, []
        return actions

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        live = set(live_tasks)
        for record in self.convoys.values():
            for node, state in record.run.node_states.items():
                task_id = record.node_tasks.get(node)
                if state is policy.NodeState.RUNNING and task_id is None:
                    key = node
                    dispatch = policy.Dispatch(
                        node=key,
                        role=next(n.role for n in record.run.nodes if n.key == key),
                        task="",
                        inputs={
                            dep: record.run.outputs.get(dep)
                            for dep in next(n.depends_on for n in record.run.nodes if n.key == key)
                        },
                    )
                    self._actions.append(self._submit(record, dispatch))
                elif state is policy.NodeState.CANCELLED and task_id in live:
                    self._actions.append(CancelOwned(task_id, "its convoy no longer needs it"))

    def history(self) -> list[event_pb2.Event]:
        return in_seen_order(record.history for record in self.convoys.values())

    # -- queries -----------------------------------------------------------------------

    def counts_by_state(self) -> dict[str, int]:
        """Convoys by state name, for the `godel_convoys` gauge."""
        return count_states(record.run.state for record in self.convoys.values())

    def to_proto(self, record: ConvoyRecord) -> convoy_pb2.Convoy:
        """The convoy as the API shows it, nodes filled in from their tasks."""
        convoy = convoy_pb2.Convoy()
        convoy.CopyFrom(record.convoy)
        run = record.run
        convoy.state = _CONVOY_STATES[run.state]
        convoy.dependencies.extend(
            convoy_pb2.ConvoyDependency(node=node, depends_on=dep) for node, dep in run.dependencies
        )
        if record.start_time:
            convoy.start_time.FromNanoseconds(int(record.start_time * 1e9))
        if record.end_time:
            convoy.end_time.FromNanoseconds(int(record.end_time * 1e9))
        ended = run.ended
        if ended is not None and ended.state is not policy.ConvoyState.SUCCEEDED:
            code = "NODE_FAILED" if ended.state is policy.ConvoyState.FAILED else "CANCELLED"
            convoy.error.CopyFrom(task_pb2.TaskError(code=code, message=ended.reason))
        for node in convoy.agents:
            key = node.name or node.role
            state = run.node_states[key]
            node.state = _NODE_STATES[state]
            task = self._tasks.get(record.node_tasks.get(key, ""))
            if task is None:
                if key in run.node_reasons:
                    node.error.CopyFrom(task_pb2.TaskError(message=run.node_reasons[key]))
                continue
            node.task_id = task.id
            node.attempts = task.attempts
            node.agent_id = task.agent_id
            if state is policy.NodeState.RUNNING and task.state == task_pb2.Task.STATE_QUEUED:
                node.state = convoy_pb2.ConvoyNode.STATE_QUEUED
            if task.start_time:
                node.start_time.FromNanoseconds(int(task.start_time * 1e9))
            if task.end_time:
                node.end_time.FromNanoseconds(int(task.end_time * 1e9))
            if task.output is not None:
                node.output.CopyFrom(task.output)
            if task.error is not None and state is not policy.NodeState.SUCCEEDED:
                node.error.CopyFrom(task.error)
            elif key in run.node_reasons:
                node.error.CopyFrom(task_pb2.TaskError(message=run.node_reasons[key]))
        return convoy


_TASK_ENDINGS = frozenset({"task_succeeded", "task_attempt_failed", "task_cancelled"})
