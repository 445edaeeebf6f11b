"""Convoys end to end: the seed's convoy sent verbatim with grpcurl, run by real agents."""

from __future__ import annotations

import json
from contextlib import ExitStack

import grpc
import pytest

from godel_grpc._proto.godel.v1 import convoy_pb2
from godel_grpc.client import Client, RPCError
from godel_grpc.server import RunningServer
from tests.support import agent_processes, grpcurl_json, wait_for_agents

pytestmark = pytest.mark.integration

Convoy = convoy_pb2.Convoy
Node = convoy_pb2.ConvoyNode
HANDLERS = "tests.agents.handlers"

SEED_CONVOY = """{
  "name": "feature-implementation",
  "pattern": "convoy",
  "agents": [
    { "role": "architect", "task": "Design system architecture" },
    { "role": "backend", "task": "Implement API endpoints", "dependsOn": ["architect"] },
    { "role": "frontend", "task": "Build UI components", "dependsOn": ["architect"] },
    { "role": "tester", "task": "Write tests", "dependsOn": ["backend", "frontend"] },
    { "role": "reviewer", "task": "Final review", "dependsOn": ["tester"] }
  ]
}"""
ROLES = ["architect", "backend", "frontend", "tester", "reviewer"]


def span(node: convoy_pb2.ConvoyNode) -> tuple[float, float]:
    return node.start_time.ToNanoseconds() / 1e9, node.end_time.ToNanoseconds() / 1e9


def agents_for(stack: ExitStack, address: str, handlers: dict[str, str]) -> None:
    for role in ROLES:
        stack.enter_context(
            agent_processes(
                address, role, 1, "--handler", f"{HANDLERS}:{handlers.get(role, 'sleep')}"
            )
        )


async def test_the_seed_convoy_runs_in_dependency_order(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with ExitStack() as stack:
        agents_for(stack, address, {})
        await wait_for_agents(client, len(ROLES))
        # Given the seed's convoy, sent verbatim
        created = (await grpcurl_json(address, "godel.v1.ConvoyService/CreateConvoy", SEED_CONVOY))[
            "convoy"
        ]
        assert len(created["agents"]) == 5 and len(created["dependencies"]) == 5
        assert created["state"] == "STATE_PENDING"
        # When it is started
        await grpcurl_json(
            address, "godel.v1.ConvoyService/StartConvoy", json.dumps({"id": created["id"]})
        )
        done = None
        async for convoy in client.convoys.watch(created["id"], timeout=60):
            done = convoy
    # Then it succeeded, backend and frontend overlapped, tester waited for both
    assert done is not None and done.state == Convoy.STATE_SUCCEEDED
    nodes = {node.role: node for node in done.agents}
    assert all(node.state == Node.STATE_SUCCEEDED for node in nodes.values())
    backend, frontend = span(nodes["backend"]), span(nodes["frontend"])
    assert backend[0] < frontend[1] and frontend[0] < backend[1]
    assert span(nodes["tester"])[0] >= max(backend[1], frontend[1])
    assert span(nodes["reviewer"])[0] >= span(nodes["tester"])[1]
    assert span(nodes["backend"])[0] >= span(nodes["architect"])[1]
    # And each node's task carried its dependencies' outputs
    tester_task = await client.tasks.get(nodes["tester"].task_id)
    assert set(tester_task.payload["dependencies"].keys()) == {"backend", "frontend"}
    # And the metrics count the convoy and time its nodes
    registry = server.registry
    assert registry.get_sample_value("godel_convoys", {"state": "succeeded"}) == 1.0
    count = registry.get_sample_value(
        "godel_pattern_part_duration_seconds_count",
        {"pattern": "convoy", "phase": "run", "outcome": "succeeded"},
    )
    assert count == 5.0


async def test_a_failed_node_cancels_its_dependents_only(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with ExitStack() as stack:
        agents_for(stack, address, {"backend": "fail"})
        await wait_for_agents(client, len(ROLES))
        convoy = await client.convoys.create(json.loads(SEED_CONVOY))
        await convoy.start()
        done = await convoy.wait(timeout=60)
    nodes = {node.role: node for node in done.agents}
    assert done.state == Convoy.STATE_FAILED
    assert "backend" in done.error.message
    assert nodes["backend"].state == Node.STATE_FAILED
    assert nodes["frontend"].state == Node.STATE_SUCCEEDED
    assert nodes["tester"].state == Node.STATE_CANCELLED
    assert nodes["reviewer"].state == Node.STATE_CANCELLED


async def test_invalid_convoys_are_refused_with_the_node_named(client: Client) -> None:
    cycle = {
        "name": "loop",
        "agents": [
            {"role": "a", "task": "x", "dependsOn": ["b"]},
            {"role": "b", "task": "y", "dependsOn": ["a"]},
        ],
    }
    with pytest.raises(RPCError) as raised:
        await client.convoys.create(cycle)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any("dependsOn" in field for field, _ in raised.value.field_violations)
    unknown = {"name": "u", "agents": [{"role": "a", "task": "x", "dependsOn": ["ghost"]}]}
    with pytest.raises(RPCError) as missing:
        await client.convoys.create(unknown)
    assert missing.value.field_violations[0][0] == "agents[0].dependsOn[0]"
    empty_task = {"name": "e", "agents": [{"role": "a", "task": ""}]}
    with pytest.raises(RPCError) as empty:
        await client.convoys.create(empty_task)
    assert empty.value.field_violations[0][0] == "agents[0].task"
    nobody = {"name": "f", "failFast": True, "agents": [{"role": "nobody-has-this", "task": "x"}]}
    with pytest.raises(RPCError) as fail_fast:
        await client.convoys.create(nobody)
    assert fail_fast.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "nobody-has-this" in fail_fast.value.message


async def test_cancel_and_restart_rules(client: Client) -> None:
    convoy = await client.convoys.create({"name": "c", "agents": [{"role": "idle", "task": "t"}]})
    await convoy.start()
    with pytest.raises(RPCError) as twice:
        await convoy.start()
    assert twice.value.code == grpc.StatusCode.FAILED_PRECONDITION
    cancelled = await convoy.cancel("stop")
    assert cancelled.state == Convoy.STATE_CANCELLED
    assert cancelled.agents[0].state == Node.STATE_CANCELLED
    task = await client.tasks.get(cancelled.agents[0].task_id)
    assert task.state == task.STATE_CANCELLED


async def test_a_convoy_survives_a_coordinator_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the coordinator while backend and frontend run; after a restart on the same
    data directory the convoy succeeds and every node's effect was applied exactly once."""
    from tests.support import CoordinatorProcess

    record = tmp_path / "effects.jsonl"
    coordinator = CoordinatorProcess(tmp_path / "data").start()
    port = coordinator.port
    try:
        with ExitStack() as stack:
            for role in ROLES:
                stack.enter_context(
                    agent_processes(
                        coordinator.address, role, 1, "--handler", f"{HANDLERS}:apply_once",
                        env={"GODEL_TEST_RECORD": str(record)},
                    )
                )  # fmt: skip
            async with Client(coordinator.address) as client:
                await wait_for_agents(client, len(ROLES))
                convoy = await client.convoys.create(json.loads(SEED_CONVOY))
                await convoy.start()
                # Wait until an agent is really working on backend (it reported progress)
                async for update in client.convoys.watch(convoy.id, timeout=30):
                    backend = next(n for n in update.agents if n.role == "backend")
                    if backend.task_id:
                        break
                async for task in client.tasks.watch(backend.task_id, timeout=30):
                    if task.HasField("progress"):
                        break
            coordinator.kill()
            coordinator.start(port=port)
            async with Client(coordinator.address) as client:
                final = None
                async for update in client.convoys.watch(convoy.id, timeout=60):
                    final = update
        assert final is not None and final.state == Convoy.STATE_SUCCEEDED
        lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        applied = [line["key"] for line in lines if line["applied"]]
        assert sorted(applied) == sorted({f"{convoy.id}:{role}" for role in ROLES})
        # The crash hit running nodes: their attempts ran again and were deduplicated
        assert any(not line["applied"] for line in lines)
    finally:
        coordinator.stop()
