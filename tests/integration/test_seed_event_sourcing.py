"""Seed section 6 (event sourcing) as written, against a real `godel serve` process:
through the Python client, and verbatim with the real grpcurl."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.client import Client
from tests.support import CoordinatorProcess, grpcurl_json, require_tool

pytestmark = pytest.mark.integration

Agent = agent_pb2.Agent
SECTION_6 = """{
  "role": "worker",
  "eventSourcing": {
    "enabled": true,
    "snapshotInterval": 100
  }
}"""


async def wait_ready(client: Client, agent_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (await client.agents.get(agent_id)).state != Agent.STATE_READY:
        assert time.monotonic() < deadline, "the spawned agent did not connect"
        await asyncio.sleep(0.05)


async def test_section_6_through_the_client_and_grpcurl(tmp_path: Path) -> None:
    require_tool("grpcurl")
    coordinator = CoordinatorProcess(tmp_path / "data").start()
    try:
        address = coordinator.address
        async with Client(address) as client:
            # Python client, the seed's calls in snake_case
            agent = await client.agents.spawn(json.loads(SECTION_6))
            assert agent.options.event_sourcing.snapshot_interval == 100
            await wait_ready(client, agent.id)
            await client.tasks.run(role="worker", payload={"n": 1}, wait_timeout=30)
            events = await client.events.get_for_agent(agent.id)
            up_to_event_id = events[-1].id
            state = await client.agents.replay(events, up_to_event_id)
            assert state.agent.id == agent.id
            assert state.event_count == len(events)
            assert state.agent.tasks_completed == 1
            assert state.up_to_event_id == up_to_event_id

            # grpcurl, the seed's object verbatim as the request
            spawned = await grpcurl_json(address, "godel.v1.AgentService/SpawnAgent", SECTION_6)
            other = spawned["agent"]["id"]
            # (grpcurl prints the proto's own field names)
            assert spawned["agent"]["options"]["event_sourcing"] == {
                "enabled": True,
                "snapshot_interval": 100,
            }
            await wait_ready(client, other)
            listed = await grpcurl_json(
                address, "godel.v1.EventService/ListAgentEvents", json.dumps({"agentId": other})
            )
            types = [event["type"] for event in listed["events"]]
            assert types[:2] == ["agent.registered", "agent.connected"]
            last = listed["events"][-1]["id"]
            replayed = await grpcurl_json(
                address,
                "godel.v1.AgentService/ReplayAgent",
                json.dumps({"agentId": other, "upToEventId": last}),
            )
            assert replayed["state"]["agent"]["id"] == other
            assert replayed["state"]["agent"]["state"] == "STATE_READY"
            assert replayed["state"]["up_to_event_id"] == last  # int64 travels as a string
            assert int(replayed["state"]["event_count"]) == len(types)
        assert coordinator.terminate() == 0  # SIGTERM stops the spawned agents with it
    finally:
        coordinator.stop()
