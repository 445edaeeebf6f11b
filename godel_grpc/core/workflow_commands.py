"""WorkflowService's behaviour: define workflows, run their stages in order, undo.

One driver task per running workflow asks the policy (`patterns.workflow`) what to do
next, has the stage runner do it, and records every step as a "workflow.changed" event
before going on. A stage's start is recorded with the id of the convoy or saga it runs
as, and its end with the outcome; so after a restart the driver picks up exactly where
the log says it was: waiting on that convoy or saga, or deciding the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from google.protobuf import struct_pb2, timestamp_pb2

from godel_grpc._proto.godel.v1 import (
    saga_pb2,
    task_pb2,
    workflow_pb2,
    workflow_service_pb2,
)
from godel_grpc.core import events
from godel_grpc.core.paging import page_of
from godel_grpc.core.workflow_stages import ABANDON_GRACE, Outcome, StageRunner, stage_input
from godel_grpc.core.workflows import WorkflowManager, WorkflowRecord
from godel_grpc.errors import (
    FailedPrecondition,
    FieldViolation,
    GodelError,
    InvalidArgument,
    NotFound,
)
from godel_grpc.patterns import workflow as policy

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

log = logging.getLogger(__name__)

Workflow = workflow_pb2.Workflow
Stage = workflow_pb2.WorkflowStage
Compensation = saga_pb2.CompensationState

_PHASE_OF = {
    Stage.STATE_PENDING: policy.Phase.PENDING,
    Stage.STATE_RUNNING: policy.Phase.RUNNING,
    Stage.STATE_SUCCEEDED: policy.Phase.SUCCEEDED,
    Stage.STATE_FAILED: policy.Phase.FAILED,
    Stage.STATE_CANCELLED: policy.Phase.CANCELLED,
}
_STAGE_STATE = {phase: state for state, phase in _PHASE_OF.items()}
_UNDO_OF = {
    Compensation.COMPENSATION_STATE_UNSPECIFIED: policy.Undo.NONE,
    Compensation.COMPENSATION_STATE_PENDING: policy.Undo.PENDING,
    Compensation.COMPENSATION_STATE_RUNNING: policy.Undo.RUNNING,
    Compensation.COMPENSATION_STATE_SUCCEEDED: policy.Undo.SUCCEEDED,
    Compensation.COMPENSATION_STATE_FAILED: policy.Undo.FAILED,
}
_COMPENSATION = {undo: state for state, undo in _UNDO_OF.items()}
_WORKFLOW_STATE = {
    policy.Phase.SUCCEEDED: Workflow.STATE_SUCCEEDED,
    policy.Phase.FAILED: Workflow.STATE_FAILED,
    policy.Phase.CANCELLED: Workflow.STATE_CANCELLED,
}


def spec_of(stage: Stage) -> policy.StageSpec:
    return policy.StageSpec(
        name=stage.name,
        pattern=stage.pattern,
        agents=stage.agents,
        min_agents=stage.min_agents,
        max_agents=stage.max_agents,
        compensate=stage.compensate,
    )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


class WorkflowCommands:
    """The WorkflowService's behaviour, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator, stages: StageRunner) -> None:
        self._coordinator = coordinator
        self._stages = stages
        self._ids = itertools.count(1)
        self._drivers: dict[str, asyncio.Task[None]] = {}

    @property
    def _manager(self) -> WorkflowManager:
        return self._coordinator.workflows

    def _get(self, workflow_id: str) -> WorkflowRecord:
        record = self._manager.workflows.get(workflow_id)
        if record is None:
            raise NotFound("workflow", workflow_id)
        return record

    # -- commands ----------------------------------------------------------------------

    async def create(self, request: workflow_service_pb2.CreateWorkflowRequest) -> Workflow:
        """Validates the stages and records the workflow, PENDING."""
        found = policy.validate([spec_of(stage) for stage in request.stages])
        if found:
            raise InvalidArgument([FieldViolation(v.path, v.description) for v in found])
        self._coordinator.require_open()
        workflow = Workflow(
            id=f"w-{self._coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            patterns=request.patterns,
            labels=request.labels,
            state=Workflow.STATE_PENDING,
        )
        for stage in request.stages:
            defined = workflow.stages.add()
            defined.CopyFrom(stage)
            for output_only in (
                "state",
                "compensation_state",
                "resource_id",
                "output",
                "error",
                "start_time",
                "end_time",
                "compensation_task_id",
            ):
                defined.ClearField(output_only)
            defined.state = Stage.STATE_PENDING
        await self._coordinator.record([events.workflow_created(workflow)])
        return self.get(workflow.id)

    async def start(self, workflow_id: str, given: struct_pb2.Struct | None) -> Workflow:
        """Starts the first stage; the rest follow as each one succeeds."""
        record = self._get(workflow_id)
        if record.workflow.state != Workflow.STATE_PENDING:
            raise FailedPrecondition(
                f"workflow {workflow_id!r} is "
                f"{Workflow.State.Name(record.workflow.state).removeprefix('STATE_')}; only a "
                "PENDING workflow can be started",
                subject=f"workflows/{workflow_id}",
            )
        if not self._stages.can_spawn:
            raise FailedPrecondition(
                "this coordinator has no runtime to start the workflow's agents with",
                subject=f"workflows/{workflow_id}",
            )
        workflow = self._copy(record)
        workflow.state = Workflow.STATE_RUNNING
        workflow.start_time.CopyFrom(_now())
        if given is not None:
            workflow.input.CopyFrom(given)
        await self._save(workflow)
        self._drive(workflow_id)
        return self.get(workflow_id)

    async def delete(self, workflow_id: str) -> None:
        """Stops the running stage without undoing anything, stops the workflow's
        agents, and forgets the workflow."""
        record = self._get(workflow_id)
        driver = self._drivers.pop(workflow_id, None)
        if driver is not None:
            driver.cancel()
        for stage in record.workflow.stages:
            if stage.state == Stage.STATE_RUNNING and stage.resource_id:
                await self._stages.stop(stage)
        await self._stages.stop_agents(workflow_id, ABANDON_GRACE)
        await self._coordinator.record([events.workflow_deleted(workflow_id)])

    def resume(self) -> None:
        """After a restart: drives again every workflow the log shows running."""
        for workflow_id, record in self._manager.workflows.items():
            if record.workflow.state == Workflow.STATE_RUNNING:
                self._drive(workflow_id)

    async def close(self) -> None:
        """Stops every driver (coordinator shutdown); the log keeps where each was."""
        drivers = list(self._drivers.values())
        self._drivers.clear()
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)

    # -- queries -----------------------------------------------------------------------

    def get(self, workflow_id: str) -> Workflow:
        return self._copy(self._get(workflow_id))

    def list(self, page_size: int, page_token: str, state: int) -> tuple[list[Workflow], str]:
        """Workflows, newest first, optionally of one state."""
        return page_of(
            list(reversed(self._manager.workflows.values())),
            lambda record: record.workflow.id,
            self._copy,
            page_size,
            page_token,
            (lambda workflow: workflow.state == state) if state else None,
        )

    async def watch(self, workflow_id: str) -> AsyncIterator[Workflow]:
        """The workflow now, then after each change, until it ends."""
        record = self._get(workflow_id)
        changed = asyncio.Event()
        record.watchers.add(changed)
        try:
            while True:
                changed.clear()
                ended = record.ended or record.deleted
                yield self._copy(record)
                if ended or self._coordinator.stopping:
                    return
                await changed.wait()
        finally:
            record.watchers.discard(changed)

    # -- driving -----------------------------------------------------------------------

    def _drive(self, workflow_id: str) -> None:
        if workflow_id in self._drivers:
            return
        driver = asyncio.get_running_loop().create_task(self._run(workflow_id))
        self._drivers[workflow_id] = driver
        driver.add_done_callback(lambda _: self._drivers.pop(workflow_id, None))

    async def _run(self, workflow_id: str) -> None:
        try:
            while await self._step(workflow_id):
                pass
        except asyncio.CancelledError:
            raise
        except GodelError as refused:
            # A step the coordinator refuses (a stage it cannot create, agents it cannot
            # start) will be refused again: the workflow fails, saying why.
            log.warning(
                "workflow step refused",
                extra={"workflow_id": workflow_id, "error": refused.message},
            )
            await self._fail(workflow_id, refused)
        except Exception:
            # A step that cannot be carried out for now (the coordinator is stopping,
            # the store failed) leaves the workflow where the log says; a restart
            # resumes it.
            log.exception("workflow stopped", extra={"workflow_id": workflow_id})

    async def _fail(self, workflow_id: str, refused: GodelError) -> None:
        """Ends a running workflow whose next step cannot be carried out: the stage it
        was about to run, and the ones after it, never run; nothing is undone."""
        record = self._manager.workflows.get(workflow_id)
        if record is None or record.ended or self._coordinator.stopping:
            return
        workflow = self._copy(record)
        error = task_pb2.TaskError(code=refused.reason, message=refused.message)
        for stage in workflow.stages:
            if stage.state in (Stage.STATE_PENDING, Stage.STATE_RUNNING):
                stage.state = Stage.STATE_CANCELLED
                stage.error.CopyFrom(error)
        workflow.error.CopyFrom(error)
        await self._finish(workflow, policy.Phase.FAILED)

    async def _step(self, workflow_id: str) -> bool:
        """Carries out one step; False once the workflow has ended or must wait for a
        restart."""
        record = self._manager.workflows.get(workflow_id)
        if record is None or record.workflow.state != Workflow.STATE_RUNNING:
            return False
        if self._coordinator.stopping:
            return False
        workflow = self._copy(record)
        stages = list(workflow.stages)
        running = next((i for i, s in enumerate(stages) if s.state == Stage.STATE_RUNNING), None)
        if running is not None:
            return await self._finish_stage(workflow, running)
        undoing = next(
            (
                i
                for i, s in enumerate(stages)
                if s.compensation_state == Compensation.COMPENSATION_STATE_RUNNING
            ),
            None,
        )
        if undoing is not None:
            return await self._finish_undo(workflow, undoing)
        step = policy.next_step(
            [spec_of(s) for s in stages],
            [_PHASE_OF[s.state] for s in stages],
            [_UNDO_OF[s.compensation_state] for s in stages],
            workflow.patterns.transaction == "saga",
        )
        if isinstance(step, policy.RunStage):
            await self._start_stage(workflow, step.index)
            return True
        if isinstance(step, policy.UndoStage):
            await self._start_undo(workflow, step.index)
            return True
        if isinstance(step, policy.Finish):
            await self._finish(workflow, step.phase)
        return False

    async def _start_stage(self, workflow: Workflow, index: int) -> None:
        stage = workflow.stages[index]
        resource_id = await self._stages.start(workflow, stage, stage_input(workflow, stage))
        stage.resource_id = resource_id
        stage.state = Stage.STATE_RUNNING
        stage.start_time.CopyFrom(_now())
        workflow.current_stage = stage.name
        await self._save(workflow)

    async def _finish_stage(self, workflow: Workflow, index: int) -> bool:
        stage = workflow.stages[index]
        await self._stages.ensure_agents(workflow, stage)
        outcome = await self._stages.wait(workflow, stage)
        if outcome is None:
            return False
        self._ended(stage, outcome)
        workflow.current_stage = ""
        if stage.state != Stage.STATE_SUCCEEDED:
            phases, undos = policy.after_failure(
                [spec_of(s) for s in workflow.stages],
                [_PHASE_OF[s.state] for s in workflow.stages],
                workflow.patterns.transaction == "saga",
            )
            for other, phase, undo in zip(workflow.stages, phases, undos, strict=True):
                other.state = _STAGE_STATE[phase]
                if undo is policy.Undo.PENDING:
                    other.compensation_state = Compensation.COMPENSATION_STATE_PENDING
            workflow.error.CopyFrom(stage.error)
            self._sync_compensation(workflow)
        await self._save(workflow)
        return True

    async def _start_undo(self, workflow: Workflow, index: int) -> None:
        stage = workflow.stages[index]
        stage.compensation_task_id = await self._stages.start_undo(workflow, stage)
        stage.compensation_state = Compensation.COMPENSATION_STATE_RUNNING
        workflow.current_stage = stage.name
        self._sync_compensation(workflow)
        await self._save(workflow)

    async def _finish_undo(self, workflow: Workflow, index: int) -> bool:
        stage = workflow.stages[index]
        outcome = await self._stages.wait_undo(stage)
        if outcome is None:
            return False
        stage.compensation_state = (
            Compensation.COMPENSATION_STATE_SUCCEEDED
            if outcome.state == Stage.STATE_SUCCEEDED
            else Compensation.COMPENSATION_STATE_FAILED
        )
        workflow.current_stage = ""
        self._sync_compensation(workflow)
        await self._save(workflow)
        return True

    async def _finish(self, workflow: Workflow, phase: policy.Phase) -> None:
        await self._stages.stop_agents(workflow.id)
        workflow.state = _WORKFLOW_STATE[phase]
        workflow.current_stage = ""
        workflow.end_time.CopyFrom(_now())
        await self._save(workflow)

    @staticmethod
    def _ended(stage: Stage, outcome: Outcome) -> None:
        stage.state = outcome.state
        stage.end_time.CopyFrom(_now())
        stage.output.Clear()
        stage.output.update(outcome.output)
        if outcome.error is not None:
            stage.error.CopyFrom(outcome.error)

    @staticmethod
    def _sync_compensation(workflow: Workflow) -> None:
        overall = policy.overall_undo([_UNDO_OF[s.compensation_state] for s in workflow.stages])
        workflow.compensation_state = _COMPENSATION[overall]

    async def _save(self, workflow: Workflow) -> None:
        await self._coordinator.record([events.workflow_changed(workflow)])

    @staticmethod
    def _copy(record: WorkflowRecord) -> Workflow:
        workflow = Workflow()
        workflow.CopyFrom(record.workflow)
        return workflow
