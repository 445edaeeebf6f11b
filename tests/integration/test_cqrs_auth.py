"""CQRS credentials end to end: the seed's section 7 spawns, verbatim through grpcurl,
against a coordinator that requires tokens; each spawned agent gets a token with only
its side's scope, and its task command, calling back with that token, finds out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1.agent_pb2 import ModelAccess
from godel_grpc._proto.godel.v1.agent_service_pb2 import SpawnAgentRequest, TerminateAgentRequest
from godel_grpc._proto.godel.v1.agent_service_pb2_grpc import AgentServiceStub
from godel_grpc.auth.channel import open_channel
from godel_grpc.auth.tokens import TokenFile
from godel_grpc.client import Client, task_request
from godel_grpc.client._errors import RPCError
from godel_grpc.config import ServeConfig
from godel_grpc.limits import LimitsConfig
from godel_grpc.security import SecurityConfig
from godel_grpc.server import RunningServer, start_server
from tests.support import grpcurl_json, wait_for_agents

pytestmark = pytest.mark.integration

SECTION_7_COMMAND = """{"role": "worker", "purpose": "command",
  "models": {"write": true, "read": false}}"""
SECTION_7_QUERY = """{"role": "worker", "purpose": "query",
  "models": {"write": false, "read": true}}"""

PROBE = """
import asyncio, json, os
from godel_grpc.client import Client
from godel_grpc.client._errors import RPCError

async def attempt(call):
    try:
        await call
        return "OK"
    except RPCError as error:
        return error.code.name

async def main():
    async with Client(os.environ["GODEL_COORDINATOR"], token=os.environ["GODEL_TOKEN"],
                      timeout=10) as client:
        write = await attempt(client.tasks.submit(role="nobody", title="probe"))
        read = await attempt(client.agents.list())
    print(json.dumps({"write": write, "read": read}))

asyncio.run(main())
"""


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A coordinator on loopback that requires tokens; its agents run the probe."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    running = await start_server(
        ServeConfig(
            listen="127.0.0.1:0",
            metrics_listen="",
            data_dir=tmp_path / "data",
            heartbeat_interval=0.5,
            heartbeat_timeout=3.0,
            agent_exec=f"{sys.executable} {probe}",
            security=SecurityConfig(auth="required"),
        ),
        CollectorRegistry(),
    )
    try:
        yield running
    finally:
        await running.stop(grace=2.0)


async def test_seed_section_7_agents_hold_only_their_side(
    coordinator: RunningServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{coordinator.port}"
    tokens = TokenFile(tmp_path / "data")
    _, admin = tokens.create(frozenset({"admin"}), name="operator")
    header = ("-plaintext", "-H", f"authorization: Bearer {admin}")
    # Given the seed's command and query agents, spawned verbatim through grpcurl
    spawned = [
        (await grpcurl_json(address, "godel.v1.AgentService/SpawnAgent", body, *header))["agent"]
        for body in (SECTION_7_COMMAND, SECTION_7_QUERY)
    ]
    # Then each has a token of its own, bound to its name, with only its side's scope
    minted = {r.agent: set(r.scopes) for r in tokens.records() if r.spawned}
    assert minted == {
        spawned[0]["name"]: {"agent", "write"},
        spawned[1]["name"]: {"agent", "read"},
    }
    async with Client(address, token=admin, timeout=10) as client:
        await wait_for_agents(client, 2)
        # When each runs a task that writes and reads with the token it was given (both
        # tasks are leased in one round, and each agent has one slot: one task each)
        probes = await client.tasks.submit_many(
            [task_request(role="worker", title=f"probe {n}") for n in (1, 2)]
        )
        outputs = {}
        for task in probes:
            done = await client.tasks.wait(task.id, timeout=30)
            assert done.state == done.STATE_SUCCEEDED, done
            outputs[done.agent_id] = json.loads(json.dumps(dict(done.output)))
        # Then the query agent's write is PERMISSION_DENIED, and the command agent's
        # read too; each may do its own side
        assert outputs == {
            spawned[0]["id"]: {"write": "OK", "read": "PERMISSION_DENIED"},
            spawned[1]["id"]: {"write": "PERMISSION_DENIED", "read": "OK"},
        }
        # And terminating an agent revokes its token
        async with open_channel(address, token=admin) as channel:
            await AgentServiceStub(channel).TerminateAgent(
                TerminateAgentRequest(id=spawned[1]["id"], grace_period=Duration(seconds=1))
            )
    revoked = {r.agent for r in tokens.records() if r.spawned and r.revoked is not None}
    assert revoked == {spawned[1]["name"]}


async def test_contradicting_purpose_and_models_is_invalid(coordinator: RunningServer) -> None:
    """Given a query agent asking for write access, the spawn is INVALID_ARGUMENT."""
    _, admin = TokenFile(coordinator_data(coordinator)).create(frozenset({"admin"}), name="a")
    async with open_channel(f"127.0.0.1:{coordinator.port}", token=admin) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await AgentServiceStub(channel).SpawnAgent(
                SpawnAgentRequest(role="worker", purpose="query", models=ModelAccess(write=True))
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "models" in (refused.value.details() or "")


def coordinator_data(running: RunningServer) -> Path:
    runtime = running.runtime
    assert runtime is not None
    return runtime.base_dir.parent


async def test_rate_limit_is_per_principal_with_retry_info(tmp_path: Path) -> None:
    """Given a limit of 5 requests per second, a principal's burst beyond it gets
    RESOURCE_EXHAUSTED with RetryInfo, while another principal is still served."""
    running = await start_server(
        ServeConfig(
            listen="127.0.0.1:0",
            metrics_listen="",
            data_dir=tmp_path / "data",
            security=SecurityConfig(auth="required"),
            limits=LimitsConfig(rate_limit=5, rate_burst=5),
        ),
        CollectorRegistry(),
    )
    try:
        tokens = TokenFile(tmp_path / "data")
        _, greedy = tokens.create(frozenset({"read"}), name="greedy")
        _, polite = tokens.create(frozenset({"read"}), name="polite")
        address = f"127.0.0.1:{running.port}"
        async with Client(address, token=greedy) as a, Client(address, token=polite) as b:
            codes = []
            for _ in range(20):
                try:
                    await a.agents.list()
                    codes.append("OK")
                except RPCError as error:
                    codes.append(error.code.name)
                    assert error.reason == "RATE_LIMITED"
                    assert error.retry_after is not None and 0 < error.retry_after <= 1
            assert await b.agents.list() == []
        print(f"\n20 calls at a limit of 5/s, burst 5: {codes.count('OK')} admitted")
        assert 5 <= codes.count("OK") < 20
        assert codes.count("RESOURCE_EXHAUSTED") == 20 - codes.count("OK")
    finally:
        await running.stop(grace=1.0)
