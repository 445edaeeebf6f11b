"""SpawnAgent and TerminateAgent on the local runtime: real agent and sidecar processes
started by a real coordinator, driven with the seed's JSON through the real grpcurl.

The coordinator runs in this test's event loop, so grpcurl runs in a thread. Every wait
is on an observable condition (a state, a pid, a line in a file) with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    task_pb2,
)
from godel_grpc.client import Client, RPCError
from godel_grpc.config import ServeConfig
from godel_grpc.server import RunningServer, start_server
from tests.support import require_tool, until

pytestmark = pytest.mark.integration

Agent = agent_pb2.Agent
Task = task_pb2.Task

SECTION_2 = """{
  "role": "worker",
  "reflex": {"enabled": true, "memory": "persistent", "feedbackLoop": true,
             "adaptationRate": 0.1}
}"""
SECTION_4 = """{
  "role": "worker",
  "circuitBreaker": {"enabled": true, "failureThreshold": 5, "timeout": 30,
                     "halfOpenRequests": 3}
}"""
SECTION_6 = """{"role": "worker", "eventSourcing": {"enabled": true, "snapshotInterval": 100}}"""
SECTION_7_COMMAND = """{"role": "worker", "purpose": "command",
  "models": {"write": true, "read": false}}"""
SECTION_7_QUERY = """{"role": "worker", "purpose": "query",
  "models": {"write": false, "read": true}}"""
SECTION_10 = """{
  "role": "worker",
  "sidecars": [
    {"name": "logger", "image": "godel/sidecar-logger:latest", "config": {"level": "debug"}},
    {"name": "monitor", "image": "godel/sidecar-monitor:latest",
     "config": {"metrics": ["cpu", "memory"]}}
  ]
}"""


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """An in-loop coordinator whose runtime restarts crashed agents quickly."""
    running = await start_server(
        ServeConfig(
            listen="127.0.0.1:0",
            metrics_listen="",
            data_dir=tmp_path / "data",
            heartbeat_interval=0.5,
            heartbeat_timeout=3.0,
        ),
        CollectorRegistry(),
    )
    assert running.runtime is not None
    running.runtime.backoff = (0.2, 1.0)
    try:
        yield running
    finally:
        await running.stop(grace=2.0)


@pytest.fixture
async def client(coordinator: RunningServer) -> AsyncIterator[Client]:
    async with Client(f"127.0.0.1:{coordinator.port}", timeout=10.0) as connected:
        yield connected


@pytest.fixture
async def agents(
    coordinator: RunningServer,
) -> AsyncIterator[agent_service_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        yield agent_service_pb2_grpc.AgentServiceStub(channel)


async def grpcurl_spawn(port: int, body: str) -> Agent:
    """SpawnAgent with `body` as given, through the real grpcurl."""
    binary = require_tool("grpcurl")
    command = [binary, "-plaintext", "-d", body, f"127.0.0.1:{port}"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "godel.v1.AgentService/SpawnAgent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    response = agent_service_pb2.SpawnAgentResponse()
    json_format.Parse(done.stdout, response)
    return response.agent


async def ready(client: Client, agent_id: str) -> Agent:
    async def check() -> Agent | None:
        agent = await client.agents.get(agent_id)
        return agent if agent.state == Agent.STATE_READY else None

    return await until(check, f"agent {agent_id} to be READY")


async def all_gone(pids: list[int]) -> None:
    async def check() -> bool:
        return not any(psutil.pid_exists(pid) and _alive(pid) for pid in pids)

    await until(check, f"processes {pids} to exit")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def log_entries(coordinator: RunningServer, agent: Agent) -> list[dict[str, Any]]:
    path = coordinator.runtime.base_dir / agent.name / "logger" / "agent.log"  # type: ignore[union-attr]
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _struct(**fields: Any) -> Struct:
    value = Struct()
    value.update(fields)
    return value


async def run_echo(client: Client, role: str = "worker") -> Task:
    task = await client.tasks.submit(role=role, payload={"n": 1})
    done = await client.tasks.wait(task.id, timeout=20)
    assert done.state == Task.STATE_SUCCEEDED, done
    return done


async def test_seed_sidecars_spawn_logs_and_terminate(
    coordinator: RunningServer, client: Client, agents: agent_service_pb2_grpc.AgentServiceStub
) -> None:
    # Given the seed's section 10 spawn, verbatim, through grpcurl
    spawned = await grpcurl_spawn(coordinator.port, SECTION_10)
    # Then the agent comes back at once, STARTING, with a pid and its options
    assert spawned.state == Agent.STATE_STARTING and spawned.pid > 0
    assert [s.name for s in spawned.options.sidecars] == ["logger", "monitor"]
    handle = coordinator.runtime.get(spawned.id)  # type: ignore[union-attr]
    assert handle is not None
    kinds = {view.kind: view.pid for view in handle.processes()}
    assert set(kinds) == {"agent", "logger", "monitor"} and kinds["agent"] == spawned.pid
    # And three real processes run, the monitor watching the agent
    assert all(_alive(pid) for pid in kinds.values())

    # (once the monitor's own program runs: it starts behind a launcher that execs it)
    async def watching() -> bool:
        return str(spawned.pid) in psutil.Process(kinds["monitor"]).cmdline()

    await until(watching, "the monitor to run with the agent's pid")
    # And the agent becomes READY under the id SpawnAgent returned, and runs a task
    agent = await ready(client, spawned.id)
    assert agent.pid == spawned.pid and agent.options.sidecars[0].name == "logger"
    task = await run_echo(client)
    assert task.agent_id == spawned.id
    # And its debug and info lines reach the logger's file (the level is debug)

    async def both_lines() -> list[str] | None:
        got = [e["message"] for e in log_entries(coordinator, agent) if e.get("taskId") == task.id]
        return got if len(got) >= 2 else None

    messages = await until(both_lines, "the task's lines in the logger's file")
    assert any("payload received" in m for m in messages)  # debug
    assert any("returning the payload" in m for m in messages)  # info

    # When it is terminated
    stopped = await agents.TerminateAgent(
        agent_service_pb2.TerminateAgentRequest(id=spawned.id, grace_period=Duration(seconds=5))
    )
    # Then it is TERMINATED and none of the three processes is left
    assert stopped.agent.state == Agent.STATE_TERMINATED
    await all_gone(list(kinds.values()))
    assert (await client.agents.get(spawned.id)).state == Agent.STATE_TERMINATED
    # And terminating it again is refused
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agents.TerminateAgent(agent_service_pb2.TerminateAgentRequest(id=spawned.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_logger_level_filters_and_agent_outlives_logger_and_restarts(
    coordinator: RunningServer, client: Client, agents: agent_service_pb2_grpc.AgentServiceStub
) -> None:
    # Given an agent with a logger at info that asked to be restarted
    response = await agents.SpawnAgent(
        agent_service_pb2.SpawnAgentRequest(
            role="phoenix",
            restart=True,
            sidecars=[agent_pb2.SidecarSpec(name="logger", config=_struct(level="info"))],
        )
    )
    spawned = response.agent
    agent = await ready(client, spawned.id)
    task = await run_echo(client, "phoenix")

    # Then its info line is in the logger's file and its debug line is not
    async def info_line() -> list[str] | None:
        got = [e["message"] for e in log_entries(coordinator, agent) if e.get("taskId") == task.id]
        return got or None

    assert await until(info_line, "the info line") == [f"echo {task.id}: returning the payload"]

    # When the logger is killed outright, the agent still completes tasks
    handle = coordinator.runtime.get(spawned.id)  # type: ignore[union-attr]
    assert handle is not None
    logger_pid = next(v.pid for v in handle.processes() if v.kind == "logger")
    os.kill(logger_pid, signal.SIGKILL)
    await all_gone([logger_pid])
    await run_echo(client, "phoenix")
    assert _alive(spawned.pid)

    # When the agent process crashes
    os.kill(spawned.pid, signal.SIGKILL)

    # Then it is started again under the same id with a new pid, and works
    async def restarted() -> Agent | None:
        now = await client.agents.get(spawned.id)
        ok = now.pid != spawned.pid and now.state == Agent.STATE_READY
        return now if ok else None

    again = await until(restarted, "the restarted agent")
    assert again.exit_code == -signal.SIGKILL and handle.restarts == 1
    await run_echo(client, "phoenix")


async def test_seed_options_are_accepted_stored_and_nothing_outlives_shutdown(
    tmp_path: Path,
) -> None:
    running = await start_server(
        ServeConfig(
            listen="127.0.0.1:0", metrics_listen="", data_dir=tmp_path / "data", agent_exec="cat"
        ),
        CollectorRegistry(),
    )
    pids: list[int] = []
    try:
        async with Client(f"127.0.0.1:{running.port}", timeout=10.0) as client:
            # Given the seed's spawns of sections 2, 4, 6 and 7, verbatim, through grpcurl
            bodies = [SECTION_2, SECTION_4, SECTION_6, SECTION_7_COMMAND, SECTION_7_QUERY]
            spawned = await asyncio.gather(*(grpcurl_spawn(running.port, b) for b in bodies))
            pids = [a.pid for a in spawned]
            # Then each becomes a running agent, its options shown by GetAgent
            shown = [await ready(client, a.id) for a in spawned]
            assert shown[0].options.reflex.memory == "persistent"
            assert shown[0].options.reflex.adaptation_rate == pytest.approx(0.1)
            assert shown[1].options.circuit_breaker.half_open_requests == 3
            assert (await client.agents.get_circuit_state(shown[1].id)).config.timeout == 30
            assert shown[2].options.event_sourcing.snapshot_interval == 100
            assert shown[3].options.purpose == "command" and shown[3].options.models.write
            assert shown[4].options.purpose == "query" and shown[4].options.models.read
            assert {a.id for a in await client.agents.list()} >= {a.id for a in spawned}
            # And they run tasks with `godel serve --agent-exec` (here `cat`, which echoes)
            argv = psutil.Process(pids[0]).cmdline()
            assert argv[argv.index("--exec") + 1] == "cat" and "--handler" not in argv
            await run_echo(client)
            # And an unknown sidecar without a command is INVALID_ARGUMENT
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SpawnAgent(
                        agent_service_pb2.SpawnAgentRequest(
                            role="worker", sidecars=[agent_pb2.SidecarSpec(name="tracer")]
                        )
                    )
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        # When the coordinator shuts down, then no spawned process is left
        await running.stop(grace=2.0)
    await all_gone(pids)


def test_serve_takes_the_default_agent_command_from_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from godel_grpc.cli import build_parser

    assert ServeConfig.from_args(build_parser().parse_args(["serve"])).agent_exec == ""
    flagged = build_parser().parse_args(["serve", "--agent-exec", "claude -p"])
    assert ServeConfig.from_args(flagged).agent_exec == "claude -p"
    monkeypatch.setenv("GODEL_AGENT_EXEC", "./run-task.sh")
    assert ServeConfig.from_args(build_parser().parse_args(["serve"])).agent_exec == "./run-task.sh"


async def test_client_waits_for_a_spawned_agent_to_be_ready(client: Client) -> None:
    spawned = await client.agents.spawn({"role": "waiter"})
    assert spawned.state == Agent.STATE_STARTING
    ready_agent = await client.agents.wait_ready(spawned.id, timeout=30)
    assert ready_agent.state == Agent.STATE_READY and ready_agent.id == spawned.id
    await client.agents.terminate(spawned.id, grace_period=5)
    with pytest.raises(RPCError) as gone:
        await client.agents.wait_ready(spawned.id, timeout=5)
    assert gone.value.code == grpc.StatusCode.FAILED_PRECONDITION
