"""How one workflow stage runs through its pattern: its agents, its resource, its undo.

A stage gets agents of its own and runs as a real convoy, swarm or saga, created through
the same commands the API uses, so GetConvoy / GetSwarm / GetSaga show a stage's work
like any other. A convoy or saga stage's agents are started through the runtime when the
stage first needs them; a swarm stage's agents are its swarm's, which scales them.

A swarm stage splits its task into as many parts as its swarm may have agents (one
task per part), so the swarm has something to scale on; its output holds each part's.

Everything a stage creates is labelled with its workflow and stage and found again by
those labels before anything new is created, so a coordinator that restarts between
creating a stage's resource and recording it resumes that resource instead of running
the stage twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2

from godel_grpc._proto.godel.v1 import (
    agent_pb2,
    agent_service_pb2,
    convoy_pb2,
    convoy_service_pb2,
    saga_pb2,
    saga_service_pb2,
    swarm_pb2,
    swarm_service_pb2,
    task_pb2,
    task_service_pb2,
    workflow_pb2,
)
from godel_grpc.core.convoy_commands import ConvoyCommands
from godel_grpc.core.saga_commands import SagaCommands
from godel_grpc.core.swarm_commands import SwarmCommands

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator
    from godel_grpc.runtime.spawned import SpawnedAgents

WORKFLOW_LABEL = "godel.workflow"
STAGE_LABEL = "godel.workflow.stage"
AGENT_STOP_GRACE = 10.0
"""Seconds a workflow's agents get to finish when the workflow ends."""
ABANDON_GRACE = 1.0
"""Seconds a deleted workflow's agents get: their work is being thrown away."""

T = TypeVar("T")
Stage = workflow_pb2.WorkflowStage
Workflow = workflow_pb2.Workflow


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a stage's work (or its undo) ended."""

    state: workflow_pb2.WorkflowStage.State.ValueType
    """A `WorkflowStage.State`."""
    output: dict[str, Any]
    error: task_pb2.TaskError | None = None


def stage_role(workflow: Workflow, stage: Stage) -> str:
    """The role the stage's tasks target; with bulkhead isolation a role of its own."""
    role = stage.role or stage.name
    return f"{workflow.id}.{role}" if workflow.patterns.isolation == "bulkhead" else role


def undo_action(workflow: Workflow, stage: Stage) -> str:
    """The action that undoes the stage's work; empty when it has none."""
    if stage.compensate:
        return stage.compensate
    return f"{stage_role(workflow, stage)}.undo" if stage.pattern == "saga" else ""


def stage_input(workflow: Workflow, stage: Stage) -> dict[str, Any]:
    """What a stage works on: the workflow's input for the first stage, the output of
    the stage before it for the others."""
    index = next(i for i, s in enumerate(workflow.stages) if s.name == stage.name)
    given = workflow.input if index == 0 else workflow.stages[index - 1].output
    return json_format.MessageToDict(given)


def stage_payload(workflow: Workflow, stage: Stage, given: dict[str, Any]) -> struct_pb2.Struct:
    """What the stage's tasks receive: the previous stage's output (or the workflow's
    input) and where they stand."""
    payload = struct_pb2.Struct()
    payload.update(
        {
            "input": given,
            "workflow": {"id": workflow.id, "name": workflow.name},
            "stage": stage.name,
        }
    )
    return payload


def labels_of(workflow: Workflow, stage: Stage) -> dict[str, str]:
    return {WORKFLOW_LABEL: workflow.id, STAGE_LABEL: stage.name}


class StageRunner:
    """Starts, awaits and undoes the stages of workflows."""

    def __init__(
        self,
        coordinator: Coordinator,
        convoys: ConvoyCommands,
        sagas: SagaCommands,
        swarms: SwarmCommands,
        spawned: SpawnedAgents | None,
    ) -> None:
        self._coordinator = coordinator
        self._convoys = convoys
        self._sagas = sagas
        self._swarms = swarms
        self._spawned = spawned
        self._agents: dict[tuple[str, str], list[str]] = {}
        """Agents started for (workflow id, stage name) by this coordinator process."""

    @property
    def can_spawn(self) -> bool:
        return self._spawned is not None

    # -- agents ------------------------------------------------------------------------

    async def ensure_agents(self, workflow: Workflow, stage: Stage) -> None:
        """Starts the stage's agents unless this process already did."""
        key = (workflow.id, stage.name)
        if key in self._agents or self._spawned is None or stage.pattern == "swarm":
            return
        role = stage_role(workflow, stage)
        undo = undo_action(workflow, stage)
        actions = [role, undo] if undo else [role]
        request = agent_service_pb2.SpawnAgentRequest(
            role=role, actions=actions, capacity=1, exec=stage.exec
        )
        request.labels.update(labels_of(workflow, stage))
        if workflow.patterns.resilience == "circuit-breaker":
            request.circuit_breaker.CopyFrom(agent_pb2.CircuitBreakerConfig(enabled=True))
        started: list[str] = []
        self._agents[key] = started
        for _ in range(max(stage.agents, 1)):
            agent = await self._spawned.spawn(request)
            started.append(agent.id)

    async def stop_agents(self, workflow_id: str, grace: float = AGENT_STOP_GRACE) -> None:
        """Terminates every agent started for the workflow, giving running tasks `grace`
        seconds to end."""
        if self._spawned is None:
            return
        spawned = self._spawned
        ids = [
            agent_id
            for (owner, _), agents in list(self._agents.items())
            if owner == workflow_id
            for agent_id in agents
        ]
        for key in [key for key in self._agents if key[0] == workflow_id]:
            del self._agents[key]

        async def stop(agent_id: str) -> None:
            try:
                await spawned.terminate(
                    agent_service_pb2.TerminateAgentRequest(
                        id=agent_id,
                        grace_period=_duration(grace),
                    )
                )
            except Exception:  # already gone: nothing left to stop
                return

        await asyncio.gather(*(stop(agent_id) for agent_id in ids))
        for record in list(self._coordinator.swarms.swarms.values()):
            if record.swarm.labels.get(WORKFLOW_LABEL) == workflow_id:
                try:  # drains its agents: running parts (an undo, say) still finish
                    await self._swarms.delete(record.swarm.id)
                except Exception:  # already gone
                    continue

    # -- running a stage ---------------------------------------------------------------

    async def start(self, workflow: Workflow, stage: Stage, given: dict[str, Any]) -> str:
        """Creates and starts the stage's convoy or saga (or finds the one a previous
        run created); returns its id."""
        await self.ensure_agents(workflow, stage)
        if stage.pattern == "convoy":
            return await self._start_convoy(workflow, stage, given)
        if stage.pattern == "saga":
            return await self._start_saga(workflow, stage, given)
        return await self._start_swarm(workflow, stage, given)

    async def wait(self, workflow: Workflow, stage: Stage) -> Outcome | None:
        """Waits for the stage's resource to end; None when the coordinator stops first."""
        if stage.pattern == "convoy":
            return await self._last(self._convoys.watch(stage.resource_id), _convoy_outcome)
        if stage.pattern == "saga":
            return await self._last(self._sagas.watch(stage.resource_id), _saga_outcome)
        return await self._wait_swarm(workflow, stage)

    async def stop(self, stage: Stage) -> None:
        """Stops a running stage's resource without undoing anything (DeleteWorkflow)."""
        try:
            if stage.pattern == "convoy":
                await self._convoys.cancel(stage.resource_id, "workflow deleted")
            elif stage.pattern == "saga":
                await self._sagas.delete(stage.resource_id)
            else:
                await self._swarms.delete(stage.resource_id)
        except Exception:  # already ended or gone
            return

    # -- undoing a stage ---------------------------------------------------------------

    async def start_undo(self, workflow: Workflow, stage: Stage) -> str:
        """Starts undoing a finished stage; returns the compensation task's id, or ""
        for a saga stage (its saga compensates itself)."""
        if stage.pattern == "saga":
            await self._sagas.compensate(stage.resource_id, f"workflow {workflow.id} failed")
            return ""
        payload: dict[str, Any] = {
            "undo": stage.name,
            "output": json_format.MessageToDict(stage.output),
            "workflow": {"id": workflow.id, "name": workflow.name},
        }
        title = f"{workflow.name}: undo {stage.name}"
        key = f"{workflow.id}/{stage.name}/undo"
        if stage.pattern == "swarm":  # its swarm's agents undo it
            undo = swarm_service_pb2.SubmitSwarmTaskRequest(
                swarm_id=stage.resource_id,
                title=title,
                action=undo_action(workflow, stage),
                idempotency_key=key,
            )
            undo.payload.update(payload)
            return (await self._swarms.submit(undo)).id
        await self.ensure_agents(workflow, stage)
        request = task_service_pb2.SubmitTaskRequest(
            title=title, action=undo_action(workflow, stage), idempotency_key=key
        )
        request.payload.update(payload)
        request.labels.update(labels_of(workflow, stage))
        tasks = await self._coordinator.submit_tasks([request])
        return tasks[0].id

    async def wait_undo(self, stage: Stage) -> Outcome | None:
        """Waits for the undo to end; None when the coordinator stops first."""
        if stage.pattern == "saga":
            return await self._last(self._sagas.watch(stage.resource_id), _saga_undo_outcome)
        return await self._last(
            self._coordinator.watch_task(stage.compensation_task_id), _task_outcome
        )

    # -- helpers -----------------------------------------------------------------------

    async def _start_convoy(self, workflow: Workflow, stage: Stage, given: dict[str, Any]) -> str:
        mine = labels_of(workflow, stage)
        found = _labelled((r.convoy for r in self._coordinator.convoys.convoys.values()), mine)
        if found is None:
            request = convoy_service_pb2.CreateConvoyRequest(name=f"{workflow.name}/{stage.name}")
            request.labels.update(mine)
            count = max(stage.agents, 1)
            for index in range(count):
                node = request.agents.add(
                    name=stage.name if count == 1 else f"{stage.name}-{index + 1}",
                    role=stage_role(workflow, stage),
                    task=stage.task or stage.name,
                )
                node.payload.CopyFrom(stage_payload(workflow, stage, given))
            found = await self._convoys.create(request)
        if found.state == convoy_pb2.Convoy.STATE_PENDING:
            await self._convoys.start(found.id)
        return found.id

    async def _start_saga(self, workflow: Workflow, stage: Stage, given: dict[str, Any]) -> str:
        mine = labels_of(workflow, stage)
        found = _labelled((r.saga for r in self._coordinator.sagas.sagas.values()), mine)
        if found is None:
            request = saga_service_pb2.CreateSagaRequest(name=f"{workflow.name}/{stage.name}")
            request.labels.update(mine)
            count = max(stage.agents, 1)
            for index in range(count):
                step = request.steps.add(
                    name=stage.name if count == 1 else f"{stage.name}-{index + 1}",
                    action=stage_role(workflow, stage),
                    compensate=undo_action(workflow, stage),
                )
                step.payload.CopyFrom(stage_payload(workflow, stage, given))
            found = await self._sagas.create(request)
        saga = self._sagas.get(found.id)
        if saga.state == saga_pb2.Saga.STATE_PENDING:
            # A saga hands its execution input to every step as "input" (its own key in
            # a step's payload), so the stage's input goes there.
            execution = struct_pb2.Struct()
            execution.update(given)
            await self._sagas.execute(found.id, execution, manual_compensation=False)
        return found.id

    async def _start_swarm(self, workflow: Workflow, stage: Stage, given: dict[str, Any]) -> str:
        mine = labels_of(workflow, stage)
        found = _labelled((r.swarm for r in self._coordinator.swarms.swarms.values()), mine)
        if found is None:
            most = max(stage.max_agents, stage.min_agents, 1)
            request = swarm_service_pb2.CreateSwarmRequest(
                name=f"{workflow.id}.{stage.name}",
                min_agents=stage.min_agents,
                max_agents=most,
                # One part per agent: the swarm grows toward one agent per waiting part.
                scale_policy=swarm_pb2.SwarmScalePolicy(
                    metric="queue_depth",
                    target=1,
                    scale_up_threshold=0.8,
                    scale_down_threshold=0.3,
                    cooldown=1,
                ),
                agent_template=swarm_pb2.SwarmAgentTemplate(
                    role=stage_role(workflow, stage), exec=stage.exec, capacity=1
                ),
            )
            request.labels.update(mine)
            found = await self._swarms.create(request)
        await self._swarm_parts(workflow, stage, found.id, given)
        return found.id

    async def _swarm_parts(
        self, workflow: Workflow, stage: Stage, swarm_id: str, given: dict[str, Any]
    ) -> list[str]:
        """Submits the stage's parts, or finds them: each has an idempotency key, so
        asking again after a restart returns the tasks submitted before."""
        parts = max(stage.max_agents, stage.min_agents, 1)
        ids: list[str] = []
        for index in range(parts):
            request = swarm_service_pb2.SubmitSwarmTaskRequest(
                swarm_id=swarm_id,
                title=f"{stage.task or stage.name} (part {index + 1} of {parts})",
                idempotency_key=f"{workflow.id}/{stage.name}/part-{index + 1}",
            )
            request.payload.CopyFrom(stage_payload(workflow, stage, given))
            request.payload.update({"part": index + 1, "parts": parts})
            ids.append((await self._swarms.submit(request)).id)
        return ids

    async def _wait_swarm(self, workflow: Workflow, stage: Stage) -> Outcome | None:
        ids = await self._swarm_parts(
            workflow, stage, stage.resource_id, stage_input(workflow, stage)
        )
        ended: list[task_pb2.Task] = []
        for task_id in ids:
            last = await self._last(self._coordinator.watch_task(task_id), lambda task: task)
            if last is None:
                return None
            ended.append(last)
        output = {
            f"part-{index + 1}": json_format.MessageToDict(task.output)
            for index, task in enumerate(ended)
        }
        broken = next((t for t in ended if t.state != task_pb2.Task.STATE_SUCCEEDED), None)
        if broken is None:
            return Outcome(Stage.STATE_SUCCEEDED, output)
        state = (
            Stage.STATE_CANCELLED
            if broken.state == task_pb2.Task.STATE_CANCELLED
            else Stage.STATE_FAILED
        )
        return Outcome(state, output, broken.error)

    async def _last(self, updates: Any, outcome: Callable[[Any], T]) -> T | None:
        last = None
        async for update in updates:
            last = update
        if last is None or self._coordinator.stopping:
            return None
        return outcome(last)


R = TypeVar("R", convoy_pb2.Convoy, saga_pb2.Saga, swarm_pb2.Swarm)


def _labelled(resources: Iterable[R], labels: dict[str, str]) -> R | None:
    """The resource created for a stage (found by its labels), if there is one."""
    return next((found for found in resources if dict(found.labels) == labels), None)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _convoy_outcome(convoy: convoy_pb2.Convoy) -> Outcome:
    output = {node.name: json_format.MessageToDict(node.output) for node in convoy.agents}
    if convoy.state == convoy_pb2.Convoy.STATE_SUCCEEDED:
        return Outcome(Stage.STATE_SUCCEEDED, output)
    failed = next((node for node in convoy.agents if node.HasField("error")), None)
    error = failed.error if failed is not None else task_pb2.TaskError(message="convoy ended")
    state = (
        Stage.STATE_CANCELLED
        if convoy.state == convoy_pb2.Convoy.STATE_CANCELLED
        else Stage.STATE_FAILED
    )
    return Outcome(state, output, error)


def _saga_outcome(saga: saga_pb2.Saga) -> Outcome:
    output = {step.name: json_format.MessageToDict(step.output) for step in saga.steps}
    if saga.state == saga_pb2.Saga.STATE_SUCCEEDED:
        return Outcome(Stage.STATE_SUCCEEDED, output)
    failed = next((step for step in saga.steps if step.HasField("error")), None)
    error = failed.error if failed is not None else task_pb2.TaskError(message="saga ended")
    state = (
        Stage.STATE_CANCELLED if saga.state == saga_pb2.Saga.STATE_CANCELLED else Stage.STATE_FAILED
    )
    return Outcome(state, output, error)


def _saga_undo_outcome(saga: saga_pb2.Saga) -> Outcome:
    if saga.state == saga_pb2.Saga.STATE_COMPENSATED:
        return Outcome(Stage.STATE_SUCCEEDED, {})
    failed = next((step for step in saga.steps if step.HasField("compensation_error")), None)
    return Outcome(
        Stage.STATE_FAILED,
        {},
        failed.compensation_error if failed is not None else None,
    )


def _task_outcome(task: task_pb2.Task) -> Outcome:
    if task.state == task_pb2.Task.STATE_SUCCEEDED:
        return Outcome(Stage.STATE_SUCCEEDED, json_format.MessageToDict(task.output))
    return Outcome(Stage.STATE_FAILED, {}, task.error)
