"""Workflows end to end: a real coordinator spawns real agent processes for each stage,
runs the stages as real convoys and sagas, hands outputs on, and undoes finished stages
in reverse when a later one fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import (
    agent_pb2,
    convoy_service_pb2,
    convoy_service_pb2_grpc,
    saga_pb2,
    task_pb2,
    workflow_pb2,
)
from godel_grpc.client import Client, RPCError
from godel_grpc.server import RunningServer
from tests.support import CoordinatorProcess, grpcurl_json

pytestmark = pytest.mark.integration

Workflow = workflow_pb2.Workflow
Stage = workflow_pb2.WorkflowStage
Compensation = saga_pb2.CompensationState

SEED_WORKFLOW = """{
  "name": "enterprise-feature",
  "patterns": {
    "coordination": "convoy",
    "transaction": "saga",
    "resilience": "circuit-breaker",
    "isolation": "bulkhead"
  },
  "stages": [
    {"name": "design", "pattern": "convoy", "agents": 2},
    {"name": "implement", "pattern": "swarm", "minAgents": 3, "maxAgents": 10},
    {"name": "verify", "pattern": "saga", "agents": 2}
  ]
}"""


async def test_stages_run_in_order_on_their_own_agents_and_hand_outputs_on(
    server: RunningServer, client: Client
) -> None:
    handle = await client.workflows.create(
        {
            "name": "release",
            "patterns": {
                "coordination": "convoy",
                "transaction": "saga",
                "resilience": "circuit-breaker",
                "isolation": "bulkhead",
            },
            "stages": [
                {"name": "design", "pattern": "convoy", "agents": 2},
                {"name": "verify", "pattern": "saga", "agents": 1},
            ],
        }
    )
    assert handle.workflow.state == Workflow.STATE_PENDING
    await handle.start({"ticket": "T-1"})
    done = await asyncio.wait_for(handle.wait(), 90)

    assert done.state == Workflow.STATE_SUCCEEDED, done
    design, verify = done.stages
    assert [design.state, verify.state] == [Stage.STATE_SUCCEEDED, Stage.STATE_SUCCEEDED]
    # Each design agent got the workflow's input; verify got design's output.
    design_output = json_format.MessageToDict(design.output)
    assert sorted(design_output) == ["design-1", "design-2"]
    for node in design_output.values():
        assert node["echo"]["input"] == {"ticket": "T-1"}
    verify_output = json_format.MessageToDict(verify.output)
    assert verify_output["verify"]["echo"]["input"] == design_output
    # The stages ran as a real convoy and a real saga.
    convoy = await client.convoys.get(design.resource_id)
    assert len(convoy.agents) == 2 and convoy.agents[0].role == f"{done.id}.design"
    saga = await client.sagas.get(verify.resource_id)
    assert saga.steps[0].action == f"{done.id}.verify"
    # Isolation: each stage's tasks ran on the agents started for that stage only, and
    # resilience gave those agents a breaker.
    ran_on = {node.agent_id for node in convoy.agents}
    agents = {agent.id: agent for agent in await client.agents.list()}
    assert all(agents[agent_id].role == f"{done.id}.design" for agent_id in ran_on)
    assert all(agents[agent_id].options.circuit_breaker.enabled for agent_id in ran_on)
    # The workflow's agents are stopped once it ends.
    mine = [a for a in agents.values() if a.role.startswith(f"{done.id}.")]
    assert len(mine) == 3
    for _ in range(100):
        states = {(await client.agents.get(a.id)).state for a in mine}
        if states == {agent_pb2.Agent.STATE_TERMINATED}:
            break
        await asyncio.sleep(0.1)
    assert states == {agent_pb2.Agent.STATE_TERMINATED}


async def test_a_failed_stage_undoes_the_finished_ones_last_first(
    server: RunningServer, client: Client
) -> None:
    # The seed's workflow, where design and implement can be undone and every verify
    # agent's command fails.
    seed = json.loads(SEED_WORKFLOW)
    design_stage, implement_stage, verify_stage = seed["stages"]
    design_stage["compensate"] = "undo-design"
    implement_stage["compensate"] = "undo-implement"
    verify_stage["exec"] = "echo 'verification failed' >&2; exit 3"
    handle = await client.workflows.create(seed)
    await handle.start()
    done = await asyncio.wait_for(handle.wait(), 90)

    assert done.state == Workflow.STATE_FAILED, done
    design, implement, verify = done.stages
    assert verify.state == Stage.STATE_FAILED and verify.error.message
    assert (
        done.error.message == verify.error.message and "verification failed" in done.error.message
    )
    assert [design.state, implement.state] == [Stage.STATE_SUCCEEDED] * 2
    assert design.compensation_state == Compensation.COMPENSATION_STATE_SUCCEEDED
    assert implement.compensation_state == Compensation.COMPENSATION_STATE_SUCCEEDED
    assert done.compensation_state == Compensation.COMPENSATION_STATE_SUCCEEDED
    undo_design = await client.tasks.get(design.compensation_task_id)
    undo_implement = await client.tasks.get(implement.compensation_task_id)
    # Design's undo ran on its agents; implement's on its swarm, with the undo action.
    assert undo_design.action == "undo-design"
    assert undo_implement.swarm == implement.resource_id
    assert "undo-implement" in undo_implement.labels.values()
    assert {undo_design.state, undo_implement.state} == {task_pb2.Task.STATE_SUCCEEDED}
    # Last first: implement's undo had ended before design's was submitted.
    assert undo_implement.end_time.ToNanoseconds() <= undo_design.create_time.ToNanoseconds()
    # The undo saw what the stage had produced.
    assert json_format.MessageToDict(undo_design.output)["echo"]["undo"] == "design"


async def test_bad_workflows_and_bad_starts_get_clear_errors(client: Client) -> None:
    with pytest.raises(RPCError) as refused:
        await client.workflows.create(
            {
                "name": "bad",
                "stages": [
                    {"name": "a", "pattern": "convoy", "minAgents": 2},
                    {"name": "a", "pattern": "saga"},
                ],
            }
        )
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    paths = {field for field, _ in refused.value.field_violations}
    assert paths == {"stages[0].min_agents", "stages[1].name"}

    with pytest.raises(RPCError) as unknown:
        await client.workflows.start("w-404")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND

    handle = await client.workflows.create(
        {"name": "twice", "stages": [{"name": "only", "pattern": "convoy"}]}
    )
    await handle.start()
    with pytest.raises(RPCError) as again:
        await handle.start()
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION
    await handle.delete()
    with pytest.raises(RPCError) as gone:
        await handle.get()
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_the_seed_workflow_from_grpcurl_runs_end_to_end(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    created = await grpcurl_json(address, "godel.v1.WorkflowService/CreateWorkflow", SEED_WORKFLOW)
    workflow_id = created["workflow"]["id"]
    await grpcurl_json(
        address,
        "godel.v1.WorkflowService/StartWorkflow",
        json.dumps({"id": workflow_id, "input": {"feature": "single sign-on"}}),
    )
    done = Workflow()
    async for update in client.workflows.watch(workflow_id, timeout=120):
        done = update
    assert done.state == Workflow.STATE_SUCCEEDED, done
    design, implement, verify = done.stages
    assert [s.state for s in done.stages] == [Stage.STATE_SUCCEEDED] * 3
    # The swarm stage split its work into maxAgents parts, each done by a swarm agent
    # of the stage's own role, and it handed all of them to verify.
    parts = json_format.MessageToDict(implement.output)
    assert sorted(parts) == sorted(f"part-{i}" for i in range(1, 11))
    assert all(part["agent"].startswith(f"{workflow_id}.implement") for part in parts.values())
    assert all(
        part["echo"]["input"] == json_format.MessageToDict(design.output) for part in parts.values()
    )
    assert json_format.MessageToDict(verify.output)["verify-1"]["echo"]["input"] == parts
    # Once the workflow ended, its swarm is gone and its agents are stopping.
    with pytest.raises(RPCError) as gone:
        await client.swarms.get(implement.resource_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_stage_the_coordinator_cannot_create_fails_the_workflow_saying_why(
    server: RunningServer, client: Client
) -> None:
    # The workflow is well formed, but its swarm stage asks for more agents than the
    # runtime runs: starting that stage is refused, and the workflow must say so
    # instead of staying RUNNING for ever.
    handle = await client.workflows.create(
        {
            "name": "too-big",
            "stages": [
                {"name": "design", "pattern": "convoy"},
                {"name": "implement", "pattern": "swarm", "minAgents": 0, "maxAgents": 5000},
            ],
        }
    )
    await handle.start()
    done = await asyncio.wait_for(handle.wait(), 60)
    assert done.state == Workflow.STATE_FAILED, done
    design, implement = done.stages
    assert design.state == Stage.STATE_SUCCEEDED
    assert implement.state == Stage.STATE_CANCELLED
    assert "maxAgents" in done.error.message and done.error.code == "INVALID_ARGUMENT"


async def test_a_workflow_resumes_its_stage_after_the_coordinator_is_killed(
    tmp_path: Path,
) -> None:
    """SIGKILL the coordinator while a stage runs (its agents die with it); a new
    coordinator on the same log finishes the workflow, running that stage as the same
    convoy, not a second one."""
    data = tmp_path / "data"
    spec = {
        "name": "survivor",
        "stages": [
            {"name": "slow", "pattern": "convoy", "agents": 2, "exec": "sleep 3; cat"},
            {"name": "after", "pattern": "saga"},
        ],
    }
    first = CoordinatorProcess(data).start()
    try:
        async with Client(first.address, timeout=10) as client:
            handle = await client.workflows.create(spec)
            await handle.start({"n": 1})
            running = await handle.get()
            deadline = asyncio.get_running_loop().time() + 30
            while running.stages[0].state != Stage.STATE_RUNNING:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
                running = await handle.get()
            convoy_id = running.stages[0].resource_id
        first.kill()
    finally:
        first.stop()

    second = CoordinatorProcess(data).start()
    try:
        async with Client(second.address, timeout=10) as client:
            done = Workflow()
            async for update in client.workflows.watch(handle.id, timeout=90):
                done = update
            assert done.state == Workflow.STATE_SUCCEEDED, done
            assert done.stages[0].resource_id == convoy_id
            convoy = await client.convoys.get(convoy_id)
            assert len(convoy.agents) == 2 and convoy.state == convoy.STATE_SUCCEEDED
            async with grpc.aio.insecure_channel(second.address) as channel:
                listed = await convoy_service_pb2_grpc.ConvoyServiceStub(channel).ListConvoys(
                    convoy_service_pb2.ListConvoysRequest()
                )
            assert [c.id for c in listed.convoys] == [convoy_id]  # no second convoy
    finally:
        second.stop()
