"""Swarms end to end: a real coordinator spawns real agent processes for a swarm, grows
it under load, drains and stops agents when the load is gone, and keeps the swarm
across a restart. The seed's JSON goes through the real grpcurl.

Every wait is on a condition a user could check (GetSwarm, GetTask, ListAgents) with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from godel_grpc._proto.godel.v1 import agent_pb2, swarm_pb2, swarm_service_pb2, task_pb2
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.auth.tokens import TokenFile
from godel_grpc.client import Client, RPCError
from godel_grpc.config import ServeConfig
from godel_grpc.errors import NotFound
from godel_grpc.security import SecurityConfig
from godel_grpc.server import RunningServer, start_server
from tests.support import CoordinatorProcess, grpcurl_json, require_tool

pytestmark = pytest.mark.integration

Task = task_pb2.Task
Agent = agent_pb2.Agent
T = TypeVar("T")

SEED_SWARM = """{
  "name": "processing-swarm",
  "minAgents": 2,
  "maxAgents": 20,
  "scalePolicy": {
    "metric": "queue_depth",
    "target": 10,
    "scaleUpThreshold": 0.8,
    "scaleDownThreshold": 0.3
  }
}"""


@contextmanager
def swarm_coordinator(data_dir: Path) -> Iterator[CoordinatorProcess]:
    """A coordinator process that is always stopped with SIGTERM, so that its runtime
    stops the swarm agents it spawned (SIGKILL would orphan them)."""
    process = CoordinatorProcess(data_dir)
    try:
        yield process.start()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.terminate(timeout=60)
        process.stop()


async def until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float, what: str
) -> T:
    """Calls `probe` until `done` holds for its value; fails after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}: {value}"
        await asyncio.sleep(0.1)


async def live_swarm_agents(client: Client, swarm: str) -> list[Agent]:
    """The swarm's spawned agents that are not terminated, as ListAgents shows them."""
    return [
        a
        for a in await client.agents.list()
        if a.labels.get("godel.swarm") == swarm and a.state != Agent.STATE_TERMINATED
    ]


async def swarm_history(client: Client, agent_id: str) -> dict[str, str]:
    """The reason of each swarm membership event recorded for the agent, by kind."""
    reasons: dict[str, str] = {}
    for event in await client.events.get_for_agent(agent_id):
        kind = event.WhichOneof("payload") or ""
        if kind in ("swarm_agent_draining", "swarm_agent_stopped"):
            reasons[kind] = getattr(event, kind).reason
    return reasons


async def test_seed_swarm_and_task_through_grpcurl(tmp_path: Path) -> None:
    # Given a real coordinator process, when the seed's swarm and a task in the seed's
    # shape go through grpcurl verbatim,
    with swarm_coordinator(tmp_path / "data") as coordinator:
        created = await grpcurl_json(
            coordinator.address, "godel.v1.SwarmService/CreateSwarm", SEED_SWARM
        )
        swarm = created["swarm"]
        task = {"swarmId": swarm["id"], "title": "Process record 1", "priority": "high"}
        submitted = await grpcurl_json(
            coordinator.address, "godel.v1.SwarmService/SubmitSwarmTask", json.dumps(task)
        )

        # then the swarm starts its two agents and one of them runs the task (grpcurl
        # prints the proto field names).
        assert swarm["name"] == "processing-swarm"
        assert swarm["current_agents"] == 2 and swarm["desired_agents"] == 2
        assert submitted["task"]["state"] == "STATE_QUEUED"
        assert submitted["task"]["swarm"] == swarm["id"]
        async with Client(coordinator.address) as client:
            done = await client.tasks.wait(submitted["task"]["id"], timeout=60)
            assert done.state == Task.STATE_SUCCEEDED
            assert done.agent_id in (await client.swarms.get(swarm["id"])).agent_ids
            shown = await grpcurl_json(
                coordinator.address,
                "godel.v1.SwarmService/GetSwarm",
                json.dumps({"id": swarm["id"]}),
            )
            assert shown["swarm"]["tasks_completed"] == "1"
            bounds = shown["swarm"]["scale_events"][-1]
            assert bounds["trigger"] == "bounds" and bounds["to_agents"] == 2
            await client.swarms.delete(swarm["id"])
            await until(
                lambda: live_swarm_agents(client, "processing-swarm"),
                lambda agents: not agents,
                60,
                "agents stopped after delete",
            )


async def test_swarm_grows_under_load_and_shrinks_without_interrupting_tasks(
    tmp_path: Path,
) -> None:
    # Given a swarm of 2 to 8 agents at 10 tasks per agent, whose agents run a 200 ms
    # command per task,
    with swarm_coordinator(tmp_path / "data") as coordinator:
        async with Client(coordinator.address) as client:
            swarm = await client.swarms.create(
                {
                    "name": "burst",
                    "minAgents": 2,
                    "maxAgents": 8,
                    "scalePolicy": {
                        "metric": "queue_depth",
                        "target": 10,
                        "scaleUpThreshold": 0.8,
                        "scaleDownThreshold": 0.3,
                        "cooldown": 1,
                        "scaleDownStabilizationWindow": 1,
                    },
                    "agentTemplate": {"exec": "sleep 0.2", "capacity": 1},
                }
            )
            assert swarm.swarm.current_agents == 2

            # when 300 tasks arrive at once,
            tasks = await asyncio.gather(
                *(swarm.submit({"title": f"item {i}"}) for i in range(300))
            )

            # then it grows to at least 6 agents and every task completes,
            peak = 0

            async def watch() -> swarm_pb2.Swarm:
                nonlocal peak
                shown = await swarm.get()
                peak = max(peak, shown.current_agents)
                return shown

            await until(watch, lambda s: s.tasks_completed == 300, 50, "300 tasks completed")
            assert peak >= 6
            ups = [e for e in swarm.swarm.scale_events if e.to_agents > e.from_agents]
            assert any(e.trigger == "load" and e.metric_value >= 60 for e in ups), ups

            # and once the queue is empty and the cooldown has passed it is back to 2,
            shrunk = await until(
                swarm.get,
                lambda s: s.current_agents == 2 and s.draining_agents == 0,
                30,
                "shrink to 2",
            )
            assert shrunk.queue_depth == 0 and shrunk.in_flight == 0
            downs = [e for e in shrunk.scale_events if e.to_agents < e.from_agents]
            assert downs and downs[0].trigger == "load" and downs[0].to_agents == 2
            await until(
                lambda: live_swarm_agents(client, "burst"),
                lambda agents: len(agents) == 2,
                60,
                "only 2 agent processes left",
            )

            # without interrupting a single task: each ran once, on one agent.
            ended = await asyncio.gather(*(client.tasks.get(t.id) for t in tasks))
            assert all(t.state == Task.STATE_SUCCEEDED for t in ended)
            interrupted = [t.id for t in ended if t.attempts != 1 or t.failed_attempts]
            assert interrupted == []
            assert len({t.agent_id for t in ended}) >= 6

            # The swarm's size and its scale events are on /metrics.
            text = await asyncio.to_thread(_scrape, coordinator.metrics_port)
            families = {f.name: f for f in text_string_to_metric_families(text)}
            sizes = {
                s.labels["state"]: s.value
                for s in families["godel_swarm_agents"].samples
                if s.labels["swarm"] == "burst"
            }
            assert sizes["current"] == 2
            events = {
                (s.labels["direction"], s.labels["trigger"]): s.value
                for s in families["godel_swarm_scale_events"].samples
                if s.name.endswith("_total")
            }
            assert events[("up", "load")] >= 1 and events[("down", "load")] >= 1
            checked = await asyncio.to_thread(
                subprocess.run,
                [require_tool("promtool"), "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


async def test_swarm_survives_a_restart_and_comes_back_to_min(tmp_path: Path) -> None:
    # Given a swarm with one agent, a finished task and a waiting one,
    with swarm_coordinator(tmp_path / "data") as coordinator:
        async with Client(coordinator.address) as client:
            swarm = await client.swarms.create(
                name="durable", minAgents=1, maxAgents=1, agentTemplate={"role": "echoer"}
            )
            first = await swarm.submit({"title": "before"})
            await client.tasks.wait(first.id, timeout=60)
            pids = [a.pid for a in await live_swarm_agents(client, "durable")]
        # when the coordinator stops (its agents stop with it) and starts again,
        assert coordinator.terminate() == 0
        assert pids and not [p for p in pids if psutil.pid_exists(p)]
        coordinator.start()
        async with Client(coordinator.address) as client:
            # then the swarm is still there and is brought back to one agent,
            again = await until(
                lambda: client.swarms.get(swarm.id),
                lambda s: s.current_agents == 1,
                30,
                "back to min",
            )
            assert again.name == "durable" and again.agent_template.role == "echoer"
            assert again.agent_ids[0] not in swarm.swarm.agent_ids
            assert again.scale_events[0].trigger == "bounds"
            assert len(again.scale_events) == 2  # the first start and the restart
            # and new work runs on the new agent.
            later = await client.swarms.submit(swarm.id, {"title": "after"})
            done = await client.tasks.wait(later.id, timeout=60)
            assert done.state == Task.STATE_SUCCEEDED
            assert done.agent_id == again.agent_ids[0]
            assert done.output["agent"] == (await client.agents.get(done.agent_id)).name


async def test_swarm_agents_get_the_templates_circuit_breaker(tmp_path: Path) -> None:
    # Given a swarm whose agent template sets its own breaker,
    with swarm_coordinator(tmp_path / "data") as coordinator:
        async with Client(coordinator.address) as client:
            await client.swarms.create(
                name="guarded",
                minAgents=1,
                maxAgents=1,
                agentTemplate={
                    "role": "echoer",
                    "circuitBreaker": {"enabled": True, "failureThreshold": 2, "timeout": 7},
                },
            )
            # when its agent has connected,
            (agent,) = await until(
                lambda: live_swarm_agents(client, "guarded"),
                lambda agents: len(agents) == 1 and agents[0].state == Agent.STATE_READY,
                60,
                "the swarm's agent ready",
            )
            # then the coordinator guards it with those settings, not the defaults.
            circuit = await client.agents.get_circuit_state(agent.id)
            assert circuit.config.enabled
            assert (circuit.config.failure_threshold, circuit.config.timeout) == (2, 7.0)


async def test_bad_swarms_are_refused_with_the_right_status(
    server: RunningServer, client: Client
) -> None:
    with pytest.raises(RPCError) as bad:
        await client.swarms.create(
            name="bad",
            minAgents=5,
            maxAgents=2,
            scalePolicy={"scaleUpThreshold": 0.3, "scaleDownThreshold": 0.5},
        )
    assert bad.value.code.name == "INVALID_ARGUMENT"
    fields = {field for field, _ in bad.value.field_violations}
    assert fields == {"maxAgents", "scalePolicy.scaleDownThreshold"}

    with pytest.raises(RPCError) as breaker:
        await client.swarms.create(
            name="bad-breaker",
            minAgents=0,
            maxAgents=1,
            agentTemplate={"circuitBreaker": {"windowSize": 4, "minimumCalls": 5}},
        )
    assert breaker.value.code.name == "INVALID_ARGUMENT"
    assert {field for field, _ in breaker.value.field_violations} == {
        "agentTemplate.circuitBreaker"
    }

    with pytest.raises(RPCError) as unknown:
        await client.swarms.submit("sw-nope", {"title": "lost"})
    assert unknown.value.code.name == "NOT_FOUND"

    with pytest.raises(RPCError) as priority:
        await client.swarms.submit("sw-nope", {"title": "x", "priority": "urgent"})
    assert priority.value.code.name == "INVALID_ARGUMENT"

    empty = await client.swarms.create(name="idle", minAgents=0, maxAgents=1)
    with pytest.raises(RPCError) as again:
        await client.swarms.create(name="idle", minAgents=0, maxAgents=1)
    assert again.value.code.name == "ALREADY_EXISTS"
    assert empty.swarm.current_agents == 0
    assert [s.name for s in await client.swarms.list()] == ["idle"]
    await empty.delete()
    with pytest.raises(RPCError) as gone:
        await empty.get()
    assert gone.value.code.name == "NOT_FOUND"


async def test_delete_drains_busy_agents_and_cancels_waiting_tasks(tmp_path: Path) -> None:
    # Given a swarm of two agents, each running a 1.5 s task, with two more waiting,
    with swarm_coordinator(tmp_path / "data") as coordinator:
        async with Client(coordinator.address) as client:
            swarm = await client.swarms.create(
                name="slow",
                minAgents=2,
                maxAgents=2,
                agentTemplate={"exec": "sleep 1.5", "capacity": 1},
            )
            tasks = [await swarm.submit({"title": f"slow {i}"}) for i in range(4)]
            running = await until(swarm.get, lambda s: s.in_flight == 2, 30, "two tasks running")
            # when the swarm is deleted,
            await swarm.delete()
            ended = await asyncio.gather(*(client.tasks.wait(t.id, timeout=30) for t in tasks))
            # then the running tasks finish on their agents, the waiting ones are
            # cancelled, and the agents stop once idle,
            states = sorted(Task.State.Name(t.state) for t in ended)
            assert states == ["STATE_CANCELLED"] * 2 + ["STATE_SUCCEEDED"] * 2
            assert all(t.attempts == 1 for t in ended if t.state == Task.STATE_SUCCEEDED)
            await until(
                lambda: live_swarm_agents(client, "slow"),
                lambda agents: not agents,
                60,
                "agents stopped after their work",
            )
            # each recorded as drained by the delete, then stopped because it was drained.
            for agent_id in running.agent_ids:
                history = await until(
                    lambda agent_id=agent_id: swarm_history(client, agent_id),
                    lambda kinds: "swarm_agent_stopped" in kinds,
                    30,
                    f"{agent_id} recorded stopped",
                )
                assert history == {
                    "swarm_agent_draining": "swarm deleted",
                    "swarm_agent_stopped": "drained",
                }


async def test_a_swarm_deleted_while_its_agent_token_is_written_starts_no_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a coordinator with authentication on, where writing the token of a swarm's
    # first agent is held (the real write follows) until the swarm has been deleted,
    writing, release = asyncio.Event(), asyncio.Event()
    mint = AgentCredentials.mint

    async def held(self: AgentCredentials, *args: object) -> str:
        writing.set()
        await release.wait()
        return await mint(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(AgentCredentials, "mint", held)
    config = ServeConfig(
        listen="127.0.0.1:0",
        metrics_listen="",
        data_dir=tmp_path / "data",
        security=SecurityConfig(auth="required"),
    )
    running = await start_server(config, CollectorRegistry())
    try:
        assert running.swarms is not None and running.runtime is not None
        creating = asyncio.create_task(
            running.swarms.create(
                swarm_service_pb2.CreateSwarmRequest(name="brief", min_agents=1, max_agents=1)
            )
        )
        await asyncio.wait_for(writing.wait(), 10)
        # when the swarm is deleted meanwhile,
        await running.swarms.delete(running.coordinator.swarms.by_name["brief"].id)
        release.set()
        with pytest.raises(NotFound):
            await creating
        # then no agent process is started for it, and the token written is revoked.
        assert running.runtime.list() == []
        (token,) = [record for record in TokenFile(config.data_dir).records() if record.spawned]
        assert token.revoked is not None
    finally:
        await running.stop(grace=1.0)


async def test_scale_down_drains_busy_agents_instead_of_killing_them(tmp_path: Path) -> None:
    # Given a swarm that grows to 4 agents for 16 one-second tasks, and shrinks as soon
    # as the load falls under its down threshold (so while the last tasks still run),
    with swarm_coordinator(tmp_path / "data") as coordinator:
        async with Client(coordinator.address) as client:
            swarm = await client.swarms.create(
                {
                    "name": "tail",
                    "minAgents": 1,
                    "maxAgents": 4,
                    "scalePolicy": {
                        "target": 4,
                        "scaleUpThreshold": 0.8,
                        "scaleDownThreshold": 0.3,
                        "cooldown": 0.1,
                        "scaleDownStabilizationWindow": 0.01,
                    },
                    "agentTemplate": {"exec": "sleep 1", "capacity": 1},
                }
            )
            # when the tasks run down,
            tasks = await asyncio.gather(*(swarm.submit({"title": f"t{i}"}) for i in range(16)))
            ended = await asyncio.gather(*(client.tasks.wait(t.id, timeout=60) for t in tasks))
            shown = await until(
                swarm.get,
                lambda s: s.current_agents == 1 and s.draining_agents == 0,
                30,
                "back to one agent",
            )
            # then it shrank while agents were busy, and still every task ran once.
            downs = [e for e in shown.scale_events if e.to_agents < e.from_agents]
            assert any(e.in_flight > 0 for e in downs), list(shown.scale_events)
            assert all(t.state == Task.STATE_SUCCEEDED and t.attempts == 1 for t in ended)
