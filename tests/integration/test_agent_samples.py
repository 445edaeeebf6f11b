"""A spawned agent's monitor sidecar reports to the coordinator: GetAgent shows the
latest sample of the real process, /metrics carries per-agent gauges, and both go away
with the agent."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest

from godel_grpc._proto.godel.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    sample_pb2,
)
from godel_grpc.auth.channel import open_channel
from godel_grpc.client import Client
from godel_grpc.server import RunningServer
from tests.support import coordinator_process, godel_token

pytestmark = pytest.mark.integration

Agent = agent_pb2.Agent


async def until_agent(client: Client, agent_id: str, check, what: str) -> Agent:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        agent = await client.agents.get(agent_id)
        if check(agent):
            return agent
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def scrape(server: RunningServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as page:
        return str(page.read().decode())


async def test_monitor_samples_reach_get_agent_and_metrics_and_leave_with_the_agent(
    server: RunningServer, client: Client
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        agents = agent_service_pb2_grpc.AgentServiceStub(channel)
        request = agent_service_pb2.SpawnAgentRequest(role="sampled", name="sampled-1")
        monitor = request.sidecars.add(name="monitor")
        monitor.config.update({"interval": 0.2})
        spawned = (await agents.SpawnAgent(request)).agent

        agent = await until_agent(
            client,
            spawned.id,
            lambda a: a.HasField("latest_sample") and a.latest_sample.memory_rss_bytes > 0,
            "a sample in GetAgent",
        )
        sample = agent.latest_sample
        # The figures are the real process's: same pid, and memory close to what the OS
        # reports for it (the tree may hold a child or two, never less than the agent).
        assert sample.pid == agent.pid and sample.agent_id == agent.id
        own = psutil.Process(agent.pid).memory_info().rss
        assert own * 0.5 <= sample.memory_rss_bytes <= own * 4
        page = scrape(server)
        assert 'godel_agent_memory_rss_bytes{agent="sampled-1"}' in page

        # A sample that claims to be of another agent is refused, clearly.
        wrong = sample_pb2.Sample(agent_id="someone-else")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agents.ReportAgentSample(
                agent_service_pb2.ReportAgentSampleRequest(agent_id=agent.id, sample=wrong)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await agents.ReportAgentSample(
                agent_service_pb2.ReportAgentSampleRequest(agent_id="ag-404", sample=wrong)
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        await agents.TerminateAgent(agent_service_pb2.TerminateAgentRequest(id=agent.id))
        gone = await client.agents.get(agent.id)
        assert not gone.HasField("latest_sample")
        assert 'agent="sampled-1"' not in scrape(server)


async def test_with_auth_the_monitor_reports_with_its_agents_own_credentials(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with coordinator_process(data, "--auth", "required") as coordinator:
        admin = godel_token(data, "create", "--scopes", "admin", "--name", "operator")
        async with Client(coordinator.address, timeout=10, token=admin) as client:
            agent = await client.agents.spawn(
                {"role": "watched", "sidecars": [{"name": "monitor", "config": {"interval": 0.2}}]}
            )
            # The monitor's reports get through: it holds the agent's minted token.
            sampled = await until_agent(
                client, agent.id, lambda a: a.HasField("latest_sample"), "a sample"
            )
            assert sampled.latest_sample.pid == sampled.pid
            # Credentials bound to another agent may not report for this one.
            other = godel_token(
                data, "create", "--scopes", "agent", "--agent", "someone-else", "--name", "x"
            )
            async with open_channel(coordinator.address, token=other) as intruder:
                stub = agent_service_pb2_grpc.AgentServiceStub(intruder)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ReportAgentSample(
                        agent_service_pb2.ReportAgentSampleRequest(
                            agent_id=agent.id, sample=sample_pb2.Sample(pid=1)
                        )
                    )
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            await client.agents.terminate(agent.id)
