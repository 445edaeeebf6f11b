"""PatternService.GetPatternMetrics against a real coordinator and a real agent process:
each figure moves when its pattern does something, and agrees with the pattern's own
view of itself."""

from __future__ import annotations

import contextlib

import grpc
import pytest

from godel_grpc._proto.godel.v1 import pattern_service_pb2, pattern_service_pb2_grpc
from godel_grpc.client import Client, RPCError
from godel_grpc.server import RunningServer
from tests.support import agent_processes, wait_for_agents

pytestmark = pytest.mark.integration

HANDLERS = "tests.agents.handlers"


async def overview(server: RunningServer) -> pattern_service_pb2.GetPatternMetricsResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pattern_service_pb2_grpc.PatternServiceStub(channel)
        return await stub.GetPatternMetrics(pattern_service_pb2.GetPatternMetricsRequest())


async def test_each_pattern_shows_in_the_overview(server: RunningServer, client: Client) -> None:
    before = await overview(server)
    assert before.queues == before.bulkheads == before.active_convoys == 0
    assert before.since.ToNanoseconds() <= before.time.ToNanoseconds()

    # Backpressure: a shed-load queue of 2 takes 4 tasks; nobody drains it.
    queue = await client.queues.create(
        {"name": "q", "backpressure": {"strategy": "shed-load", "maxSize": 2}}
    )
    for _ in range(4):
        with contextlib.suppress(RPCError):
            await client.queues.enqueue(queue.id, role="nobody", priority="normal")
    # Bulkhead: a partition of one task refuses the second.
    bulkhead = await client.bulkheads.create(
        {"name": "b", "partitions": [{"name": "p", "maxAgents": 1, "maxTasks": 1}]}
    )
    await client.bulkheads.submit(bulkhead.id, "p", title="first")
    with pytest.raises(RPCError):
        await client.bulkheads.submit(bulkhead.id, "p", title="second")
    # A convoy and a workflow waiting to start, a swarm of no agents yet.
    await client.convoys.create({"name": "c", "agents": [{"role": "nobody", "task": "t"}]})
    await client.workflows.create({"name": "w", "stages": [{"name": "s", "pattern": "convoy"}]})
    await client.swarms.create({"name": "sw", "minAgents": 0, "maxAgents": 1})

    # Breaker: a connected agent forced open by an operator.
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "metered", 1, "--handler", f"{HANDLERS}:noop"):
        await wait_for_agents(client, 1, role="metered")
        (agent,) = await client.agents.list(role="metered")
        await client.agents.force_open_circuit(agent.id, "maintenance")
        now = await overview(server)

        shown = await client.queues.get(queue.id)
        assert now.queues == 1 and now.queues_under_pressure == int(shown.pressure)
        assert now.tasks_shed_total == shown.counts.shed > 0
        assert now.bulkheads == 1 and now.bulkhead_rejections_total == 1
        assert now.active_convoys == 1 and now.active_workflows == 1
        assert now.active_swarms == 1 and now.swarm_agents == 0
        assert now.open_circuits == 1 and now.breaker_opens_total == 1
        assert now.time.ToNanoseconds() >= before.time.ToNanoseconds()
