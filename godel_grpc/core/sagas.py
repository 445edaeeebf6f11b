"""Sagas over the core: each step, forward or compensating, runs as a task owned by its saga.

The ordering and rollback rules live in `patterns.saga` (pure policy); this module keeps
one `SagaRun` per saga, feeds it the events of its tasks, turns its decisions into task
actions, and shows the result as `godel.v1.Saga`. It never talks to agents or storage:
the coordinator carries out its actions and records everything as events.

A step's task targets its action (or compensating action), carries the policy's
idempotency key ``<saga id>:<step>:<phase>`` for agents to dedupe effects, and is owned
by ``TaskOwner(pattern="saga", resource_id, part=step, phase, round)``. A compensation
retried by CompensateSaga after COMPENSATION_FAILED runs as a new task of the next round;
only the latest round's task can move the saga.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import event_pb2, saga_pb2, task_pb2, task_service_pb2
from godel_grpc.core.pattern_host import (
    CancelOwned,
    PatternAction,
    SubmitOwned,
    count_states,
    in_seen_order,
)
from godel_grpc.core.records import TaskRecord
from godel_grpc.patterns import saga as policy

PATTERN = "saga"

_SAGA_STATES = {
    policy.SagaState.PENDING: saga_pb2.Saga.STATE_PENDING,
    policy.SagaState.RUNNING: saga_pb2.Saga.STATE_RUNNING,
    policy.SagaState.COMPENSATING: saga_pb2.Saga.STATE_COMPENSATING,
    policy.SagaState.SUCCEEDED: saga_pb2.Saga.STATE_SUCCEEDED,
    policy.SagaState.FAILED: saga_pb2.Saga.STATE_FAILED,
    policy.SagaState.CANCELLED: saga_pb2.Saga.STATE_CANCELLED,
    policy.SagaState.COMPENSATED: saga_pb2.Saga.STATE_COMPENSATED,
    policy.SagaState.COMPENSATION_FAILED: saga_pb2.Saga.STATE_COMPENSATION_FAILED,
}
_STEP_STATES = {
    policy.StepState.PENDING: saga_pb2.SagaStep.STATE_PENDING,
    policy.StepState.RUNNING: saga_pb2.SagaStep.STATE_RUNNING,
    policy.StepState.SUCCEEDED: saga_pb2.SagaStep.STATE_SUCCEEDED,
    policy.StepState.FAILED: saga_pb2.SagaStep.STATE_FAILED,
    policy.StepState.SKIPPED: saga_pb2.SagaStep.STATE_CANCELLED,
}
_COMPENSATION_STATES = {
    policy.CompensationState.NOT_NEEDED: saga_pb2.COMPENSATION_STATE_UNSPECIFIED,
    policy.CompensationState.PENDING: saga_pb2.COMPENSATION_STATE_PENDING,
    policy.CompensationState.RUNNING: saga_pb2.COMPENSATION_STATE_RUNNING,
    policy.CompensationState.SUCCEEDED: saga_pb2.COMPENSATION_STATE_SUCCEEDED,
    policy.CompensationState.FAILED: saga_pb2.COMPENSATION_STATE_FAILED,
}
RESTING = frozenset(
    {
        policy.SagaState.SUCCEEDED,
        policy.SagaState.FAILED,
        policy.SagaState.CANCELLED,
        policy.SagaState.COMPENSATED,
        policy.SagaState.COMPENSATION_FAILED,
    }
)
"""States in which nothing runs: a watch ends there (CompensateSaga may move on)."""
_ROLLING_BACK = frozenset(
    {
        policy.SagaState.COMPENSATING,
        policy.SagaState.COMPENSATED,
        policy.SagaState.COMPENSATION_FAILED,
    }
)
_RESERVED_PAYLOAD_KEYS = ("input", "steps", "output", "saga", "step", "phase")


def policy_steps(steps: Sequence[saga_pb2.SagaStep]) -> list[policy.SagaStep]:
    """The policy's view of the API's steps."""
    return [
        policy.SagaStep(name=step.name, action=step.action, compensate=step.compensate)
        for step in steps
    ]


TaskKey = tuple[str, str, int]
"""(step name, phase, round) of one of a saga's tasks."""


@dataclass
class TaskView:
    """What a saga shows of one of its tasks, folded from the task's events.

    Kept by the manager rather than read from the core's tasks, which drops ended tasks
    from memory and snapshots: a saga looks the same after a restart.
    """

    attempts: int = 0
    start_time: float = 0.0
    """When the task was first leased."""
    end_time: float = 0.0
    error: task_pb2.TaskError | None = None


@dataclass
class SagaRecord:
    """One saga: its definition, its run, and the tasks of its steps."""

    saga: saga_pb2.Saga
    run: policy.SagaRun
    tasks: dict[TaskKey, str] = field(default_factory=dict)
    """Task id of each (step, phase, round) submitted so far."""
    rounds: dict[tuple[str, str], int] = field(default_factory=dict)
    """Latest round decided for each (step, phase)."""
    views: dict[str, TaskView] = field(default_factory=dict)
    """What is known of each task of the saga, by task id."""
    current: policy.RunStep | None = None
    """The step (and phase) whose task the run waits for; None when nothing runs."""
    history: list[tuple[int, event_pb2.Event]] = field(default_factory=list)
    """The events that built the saga, each with the manager's sequence number."""
    start_time: float = 0.0
    end_time: float = 0.0
    deleted: bool = False
    watchers: set[asyncio.Event] = field(default_factory=set)
    """One event per watcher, set whenever the saga or one of its steps changes."""

    @property
    def at_rest(self) -> bool:
        """Nothing runs and nothing will until a caller acts (or the saga is gone)."""
        return self.deleted or self.run.state in RESTING

    def current_key(self) -> TaskKey | None:
        """(step, phase, round) of the task the run waits for."""
        if self.current is None:
            return None
        name, phase = self.current.name, self.current.phase.value
        return name, phase, self.rounds.get((name, phase), 1)

    def current_task(self) -> str | None:
        """Id of the task the run waits for, if it was submitted."""
        key = self.current_key()
        return None if key is None else self.tasks.get(key)

    def latest_task(self, step: str, phase: policy.Phase) -> str:
        """Id of the latest round's task of a step and phase; empty if none ran."""
        latest = self.rounds.get((step, phase.value), 0)
        return self.tasks.get((step, phase.value, latest), "")


class SagaManager:
    """Every saga the coordinator knows, folded from events."""

    def __init__(self, tasks: dict[str, TaskRecord]) -> None:
        self._tasks = tasks
        self.sagas: dict[str, SagaRecord] = {}
        self._owner_of: dict[str, tuple[str, TaskKey]] = {}
        self._actions: list[PatternAction] = []
        self._sequence = itertools.count()

    # -- folding ---------------------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        if not self.sagas and not event.HasField("saga_created"):
            return  # the common case on the task hot path: nothing to fold into
        kind = event.WhichOneof("payload")
        if kind == "saga_created":
            self._on_created(event)
        elif kind == "saga_executed":
            self._on_executed(event)
        elif kind == "saga_compensation_requested":
            record = self._record(event.saga_compensation_requested.saga_id, event)
            if record is not None:
                try:
                    decisions = record.run.compensate()
                except policy.IllegalTransition:
                    return  # the command checked; a replayed log cannot get here
                self._follow(record, decisions, event)
        elif kind == "saga_deleted":
            self._on_deleted(event)
        elif kind == "task_submitted":
            owner = event.task_submitted.task.owner
            if owner.pattern == PATTERN:
                record = self._record(owner.resource_id, event)
                if record is not None:
                    task_id = event.task_submitted.task.id
                    key = (owner.part, owner.phase, owner.round)
                    record.tasks[key] = task_id
                    record.views[task_id] = TaskView()
                    self._owner_of[task_id] = (owner.resource_id, key)
        elif kind in _TASK_ENDINGS:
            self._on_task_event(kind, event)
        elif kind == "task_leased":
            owned = self._owner_of.get(event.task_leased.task_id)
            record = self._record(owned[0], event) if owned is not None else None
            view = record.views.get(event.task_leased.task_id) if record is not None else None
            if view is not None:
                view.attempts = event.task_leased.attempt
                view.start_time = view.start_time or event.time.ToNanoseconds() / 1e9

    def _record(self, saga_id: str, event: event_pb2.Event) -> SagaRecord | None:
        record = self.sagas.get(saga_id)
        if record is not None:
            record.history.append((next(self._sequence), event))
            for changed in record.watchers:
                changed.set()
        return record

    def _on_created(self, event: event_pb2.Event) -> None:
        saga = event.saga_created.saga
        try:
            run = policy.SagaRun(saga.id, policy_steps(saga.steps))
        except (ValueError, policy.InvalidDefinition):
            return  # the command validated; a replayed log cannot get here
        record = SagaRecord(saga, run)
        record.history.append((next(self._sequence), event))
        self.sagas[saga.id] = record

    def _on_executed(self, event: event_pb2.Event) -> None:
        executed = event.saga_executed
        record = self._record(executed.saga_id, event)
        if record is None or record.run.state is not policy.SagaState.PENDING:
            return
        # The run is built at create, before the caller chose the mode; nothing has
        # happened to it yet, so a fresh one in the chosen mode replaces it.
        record.run = policy.SagaRun(
            record.saga.id,
            policy_steps(record.saga.steps),
            manual_compensation=executed.manual_compensation,
        )
        record.saga.input.CopyFrom(executed.input)
        record.start_time = event.time.ToNanoseconds() / 1e9
        self._follow(record, record.run.execute(json_format.MessageToDict(executed.input)), event)

    def _on_deleted(self, event: event_pb2.Event) -> None:
        record = self.sagas.pop(event.saga_deleted.saga_id, None)
        if record is None:
            return
        task_id = record.current_task()
        task = self._tasks.get(task_id or "")
        if task is not None and not task.terminal:
            self._actions.append(CancelOwned(task.id, "its saga was deleted"))
        for owned in record.tasks.values():
            self._owner_of.pop(owned, None)
        record.deleted = True
        record.current = None
        for changed in record.watchers:
            changed.set()

    def _on_task_event(self, kind: str, event: event_pb2.Event) -> None:
        payload = getattr(event, kind)
        owner = self._owner_of.get(payload.task_id)
        if owner is None:
            return
        record = self._record(owner[0], event)
        if record is None:
            return
        view = record.views.get(payload.task_id)
        if view is not None:
            if kind == "task_attempt_failed":
                view.error = payload.error
            elif kind == "task_cancelled":
                view.error = task_pb2.TaskError(code="CANCELLED", message=payload.reason)
            if kind != "task_attempt_failed" or payload.final:
                view.end_time = event.time.ToNanoseconds() / 1e9
        if record.current is None:
            return
        if record.current_key() != owner[1] or record.current_task() != payload.task_id:
            return  # an older round, or a task the run no longer waits for
        if kind == "task_attempt_failed" and not payload.final:
            return  # the task layer retries it
        current = record.current
        index, phase = current.index, current.phase
        if kind == "task_succeeded":
            if phase is policy.Phase.FORWARD:
                output = json_format.MessageToDict(payload.output)
                decisions = record.run.step_succeeded(index, output)
            else:
                decisions = record.run.compensation_succeeded(index)
        else:
            if kind == "task_attempt_failed":
                reason = payload.error.message or payload.error.code
            else:
                reason = f"its task was cancelled: {payload.reason}"
            if phase is policy.Phase.FORWARD:
                decisions = record.run.step_failed(index, reason)
            else:
                decisions = record.run.compensation_failed(index, reason)
        record.current = None
        self._follow(record, decisions, event)

    def _follow(
        self,
        record: SagaRecord,
        decisions: Sequence[policy.SagaDecision],
        event: event_pb2.Event,
    ) -> None:
        for decision in decisions:
            if isinstance(decision, policy.RunStep):
                step_phase = (decision.name, decision.phase.value)
                record.rounds[step_phase] = record.rounds.get(step_phase, 0) + 1
                record.current = decision
                self._actions.append(self._submit(record, decision))
            else:
                record.current = None
                record.end_time = event.time.ToNanoseconds() / 1e9

    def _submit(self, record: SagaRecord, run: policy.RunStep) -> SubmitOwned:
        step = record.saga.steps[run.index]
        request = task_service_pb2.SubmitTaskRequest(
            title=f"{record.saga.name or record.saga.id}: {step.name} ({run.phase.value})",
            action=run.action,
            max_attempts=step.retry.max_attempts,
            idempotency_key=run.idempotency_key,
        )
        if step.HasField("timeout"):
            request.timeout.CopyFrom(step.timeout)
        if step.HasField("retry"):
            # The saga's documented default: a first retry after 1 second, then doubling.
            request.retry_backoff.FromNanoseconds(int((step.retry.backoff or 1.0) * 1e9))
        payload: dict[str, object] = {}
        if step.HasField("payload"):
            extra = json_format.MessageToDict(step.payload)
            payload.update((k, v) for k, v in extra.items() if k not in _RESERVED_PAYLOAD_KEYS)
        payload.update(run.input)
        payload.update(
            saga={"id": record.saga.id, "name": record.saga.name},
            step=run.name,
            phase=run.phase.value,
        )
        request.payload.update(payload)  # type: ignore[arg-type]
        owner = task_pb2.TaskOwner(
            pattern=PATTERN,
            resource_id=record.saga.id,
            part=run.name,
            phase=run.phase.value,
            round=record.rounds.get((run.name, run.phase.value), 1),
        )
        return SubmitOwned(request, owner)

    # -- the coordinator's side --------------------------------------------------------

    def take_actions(self) -> list[PatternAction]:
        actions, self._actions = self._actions, []
        return actions

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        for record in self.sagas.values():
            if record.current is not None and record.current_task() is None:
                self._actions.append(self._submit(record, record.current))
        for task_id in live_tasks:
            task = self._tasks.get(task_id)
            if task is None or not task.has_owner:
                continue
            owned_by = task.spec.owner  # parsed once: the spec is kept serialized
            if owned_by.pattern != PATTERN:
                continue
            owner = self.sagas.get(owned_by.resource_id)
            if owner is None or owner.current_task() != task_id:
                self._actions.append(CancelOwned(task_id, "its saga no longer needs it"))

    def history(self) -> list[event_pb2.Event]:
        return in_seen_order(record.history for record in self.sagas.values())

    # -- queries -----------------------------------------------------------------------

    def counts_by_state(self) -> dict[str, int]:
        """Sagas by state name, for the `godel_sagas` gauge."""
        return count_states(record.run.state for record in self.sagas.values())

    def to_proto(self, record: SagaRecord) -> saga_pb2.Saga:
        """The saga as the API shows it, steps filled in from their tasks."""
        saga = saga_pb2.Saga()
        saga.CopyFrom(record.saga)
        run = record.run
        saga.state = _SAGA_STATES[run.state]
        saga.current_step = run.current_step
        saga.failed_step = run.failed_step
        if record.start_time:
            saga.start_time.FromNanoseconds(int(record.start_time * 1e9))
        if record.end_time and run.state in RESTING:
            saga.end_time.FromNanoseconds(int(record.end_time * 1e9))
        rolled_back = run.state in _ROLLING_BACK or (
            run.state is policy.SagaState.FAILED and not run.manual_compensation
        )
        for index, step in enumerate(saga.steps):
            self._fill_step(record, index, step, rolled_back)
        ended = run.last_end
        if run.state is policy.SagaState.COMPENSATION_FAILED and ended is not None:
            saga.error.code = "COMPENSATION_FAILED"
            saga.error.message = ended.reason
        elif run.failed_step:
            failed = next(s for s in saga.steps if s.name == run.failed_step)
            saga.error.CopyFrom(failed.error)  # the task's error, or the policy's reason
        elif run.state is policy.SagaState.CANCELLED and ended is not None:
            saga.error.CopyFrom(task_pb2.TaskError(code="CANCELLED", message=ended.reason))
        return saga

    def _fill_step(
        self, record: SagaRecord, index: int, step: saga_pb2.SagaStep, rolled_back: bool
    ) -> None:
        run = record.run
        state = run.step_states[index]
        undo = run.compensation_states[index]
        step.state = _STEP_STATES[state]
        step.compensation_state = _COMPENSATION_STATES[undo]
        if (
            undo is policy.CompensationState.NOT_NEEDED
            and not step.compensate
            and state is policy.StepState.SUCCEEDED
            and rolled_back
        ):
            step.compensation_state = saga_pb2.COMPENSATION_STATE_SUCCEEDED  # nothing to undo
        step.task_id = record.latest_task(step.name, policy.Phase.FORWARD)
        forward = record.views.get(step.task_id)
        if forward is not None:
            step.attempts = forward.attempts
            if forward.start_time:
                step.start_time.FromNanoseconds(int(forward.start_time * 1e9))
            if forward.end_time:
                step.end_time.FromNanoseconds(int(forward.end_time * 1e9))
            if forward.error is not None and state is policy.StepState.FAILED:
                step.error.CopyFrom(forward.error)
        if state is policy.StepState.SUCCEEDED and step.name in run.outputs:
            output = run.outputs[step.name]
            if isinstance(output, dict):
                step.output.update(output)
        if state is policy.StepState.FAILED and not step.error.message:
            step.error.message = run.step_errors[index]
        step.compensation_task_id = record.latest_task(step.name, policy.Phase.COMPENSATE)
        phase = policy.Phase.COMPENSATE.value
        for round_ in range(1, record.rounds.get((step.name, phase), 0) + 1):
            earlier = record.views.get(record.tasks.get((step.name, phase, round_), ""))
            if earlier is not None:
                step.compensation_attempts += earlier.attempts
        undo_task = record.views.get(step.compensation_task_id)
        if undo_task is not None and undo_task.end_time:
            step.compensation_end_time.FromNanoseconds(int(undo_task.end_time * 1e9))
        if undo is policy.CompensationState.FAILED:
            if undo_task is not None and undo_task.error is not None:
                step.compensation_error.CopyFrom(undo_task.error)
            else:
                step.compensation_error.message = run.compensation_errors[index]


_TASK_ENDINGS = frozenset({"task_succeeded", "task_attempt_failed", "task_cancelled"})
