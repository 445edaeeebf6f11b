"""Backpressure queues over the real protocol: producers through the client (and
grpcurl), consumers as hand-written agent links whose hello names the queue.

Small queues keep this file fast; the 50,000-task soak of the issue's acceptance is a
separate, slower test still to be written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc._proto.godel.v1 import queue_service_pb2 as queue_pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as queue_grpc
from godel_grpc.client import Client, RPCError
from godel_grpc.config import ServeConfig
from godel_grpc.core import events
from godel_grpc.server import RunningServer, start_server
from tests.integration.test_agent_link import RawAgent
from tests.support import grpcurl_json

pytestmark = pytest.mark.integration

Task = task_pb2.Task
Ack = queue_pb.EnqueueStreamResponse

SEED = """
{
  "name": "high-volume-queue",
  "backpressure": {
    "strategy": "shed-load",
    "maxSize": 10000,
    "highWatermark": 0.8,
    "lowWatermark": 0.3
  }
}
"""


async def enqueue(client: Client, queue_id: str, **fields: object) -> tuple[str, object]:
    """("accepted", response) or ("refused", RPCError)."""
    try:
        return "accepted", await client.queues.enqueue(queue_id, **fields)
    except RPCError as error:
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return "refused", error


async def task_events(server: RunningServer, task_id: str) -> list[event_pb2.Event]:
    await server.coordinator.journal.flush()  # what the API shows may not be durable yet
    stored = await server.coordinator.store.read(0, 1000, stream=events.task_stream(task_id))
    return [event_pb2.Event.FromString(s.data) for s in stored]


async def assert_shed(client: Client, server: RunningServer, task_id: str) -> None:
    task = await client.tasks.get(task_id)
    assert task.state == Task.STATE_CANCELLED and task.error.code == "SHED", task
    await server.coordinator.journal.flush()
    cancelled = [e for e in await task_events(server, task_id) if e.HasField("task_cancelled")]
    assert cancelled and cancelled[0].task_cancelled.code == "SHED"
    assert cancelled[0].task_cancelled.reason  # the reason is recorded


async def test_the_seed_json_creates_a_queue_through_grpcurl(
    server: RunningServer, client: Client
) -> None:
    reply = await grpcurl_json(
        f"127.0.0.1:{server.port}", "godel.v1.QueueService/CreateQueue", SEED
    )
    created = reply["queue"]
    queue = await client.queues.get(created["id"])
    assert queue.name == "high-volume-queue"
    assert queue.backpressure.strategy == "shed-load"
    assert queue.backpressure.max_size == 10000
    assert queue.backpressure.low_watermark == pytest.approx(0.3)
    assert queue.depth == 0 and not queue.pressure


async def test_shed_load_keeps_the_highest_priorities_and_accounts_for_every_task(
    server: RunningServer, client: Client
) -> None:
    queue = await client.queues.create(
        {
            "name": "shed",
            "role": "worker",
            "backpressure": {
                "strategy": "shed-load",
                "maxSize": 20,
                "highWatermark": 0.8,
                "lowWatermark": 0.3,
            },
        }
    )
    sent = 0
    low: list[str] = []
    critical: list[str] = []
    # 20 low tasks fill the queue; pressure turns on at 16 (the high watermark)
    for i in range(20):
        outcome, response = await enqueue(client, queue.id, priority="low", title=f"low {i}")
        sent += 1
        assert outcome == "accepted"
        assert isinstance(response, queue_pb.EnqueueResponse)
        low.append(response.task.id)
        assert response.depth == i + 1
        assert response.pressure == (i + 1 >= 16)
    # Low newcomers are shed: nothing queued ranks below them
    for _ in range(5):
        outcome, error = await enqueue(client, queue.id, priority="low")
        sent += 1
        assert outcome == "refused" and isinstance(error, RPCError)
        assert "shed" in error.message and error.retry_after
    # 22 critical tasks: the first 20 displace the lows, oldest first; the last two are
    # shed, and only once no lower-priority task is left
    refused_critical = 0
    for i in range(22):
        outcome, response = await enqueue(client, queue.id, priority="critical")
        sent += 1
        if outcome == "accepted":
            assert isinstance(response, queue_pb.EnqueueResponse)
            critical.append(response.task.id)
            assert response.depth == 20
            await assert_shed(client, server, low[i])
        else:
            refused_critical += 1
            states = [(await client.tasks.get(t)).state for t in low]
            assert all(s == Task.STATE_CANCELLED for s in states)
    assert refused_critical == 2 and len(critical) == 20
    queue = await client.queues.get(queue.id)
    assert queue.depth == 20 and queue.pressure
    assert queue.priority_counts["critical"].shed == 2
    # A raw agent serving the queue drains it; pressure stays on down to the low
    # watermark (6) and goes off only below it
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.hello(role="other", name="drainer", queues=["shed"])
    completed = 0
    while completed < 20:
        for assignment in await agent.next_assignments():
            assert assignment.role == "worker" and assignment.priority == "critical"
            snapshot = await client.queues.get(queue.id)
            assert snapshot.depth <= 20
            assert snapshot.pressure == (snapshot.depth >= 6), snapshot
            await agent.succeed(assignment)
            completed += 1
    for task_id in critical:
        assert (await client.tasks.wait(task_id, timeout=10)).state == Task.STATE_SUCCEEDED
    await agent.close()
    queue = await client.queues.get(queue.id)
    counts = queue.counts
    assert queue.depth == 0 and not queue.pressure and queue.in_flight == 0
    assert counts.completed == 20 and counts.shed == 27 and counts.rejected == 0
    assert counts.completed + counts.shed + counts.rejected == sent
    sample = server.registry.get_sample_value

    def tasks(priority: str, outcome: str) -> float | None:
        labels = {"queue": "shed", "priority": priority, "outcome": outcome}
        return sample("godel_queue_tasks_total", labels)

    # 20 low tasks evicted and 5 low newcomers shed; 2 critical newcomers shed
    assert (tasks("low", "accepted"), tasks("low", "shed")) == (20, 25)
    assert (tasks("critical", "accepted"), tasks("critical", "shed")) == (20, 2)
    assert (tasks("normal", "accepted"), tasks("high", "rejected")) == (0, 0)
    assert sample("godel_queue_depth", {"queue": "shed"}) == 0
    assert sample("godel_queue_pressure", {"queue": "shed"}) == 0


async def test_reject_refuses_with_retry_info(client: Client) -> None:
    queue = await client.queues.create(
        name="rejecting", role="worker", backpressure={"strategy": "reject", "maxSize": 3}
    )
    for _ in range(3):
        await client.queues.enqueue(queue.id)
    with pytest.raises(RPCError) as refused:
        await client.queues.enqueue(queue.id)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rejecting" in refused.value.message
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    counts = (await client.queues.get(queue.id)).counts
    assert (counts.accepted, counts.rejected) == (3, 1)


async def test_block_holds_the_producer_until_the_queue_drains(
    server: RunningServer, client: Client
) -> None:
    queue = await client.queues.create(
        name="blocking",
        role="worker",
        backpressure={
            "strategy": "block",
            "maxSize": 4,
            "highWatermark": 0.75,
            "lowWatermark": 0.5,
        },
    )
    for _ in range(4):
        await client.queues.enqueue(queue.id)
    # A producer with a short deadline gives up with DEADLINE_EXCEEDED
    with pytest.raises(RPCError) as late:
        await client.queues.enqueue(queue.id, call_timeout=0.3)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # A patient one waits...
    waiting = asyncio.create_task(client.queues.enqueue(queue.id, title="patient"))
    deadline = asyncio.get_running_loop().time() + 10
    while (await client.queues.get(queue.id)).waiting_producers != 1:
        assert asyncio.get_running_loop().time() < deadline, "the producer never waited"
    assert not waiting.done()
    # ...while the agent drains: depth 3 (leased one), 2 — still under pressure
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.hello(role="other", queues=["blocking"])
    (first,) = await agent.next_assignments()
    await agent.succeed(first)
    (second,) = await agent.next_assignments()
    snapshot = await client.queues.get(queue.id)
    assert snapshot.depth == 2 and snapshot.pressure and not waiting.done()
    # Below the low watermark (2) the producer resumes
    await agent.succeed(second)
    accepted = await asyncio.wait_for(waiting, 10)
    assert accepted.task.title == "patient" and not accepted.pressure
    counts = (await client.queues.get(queue.id)).counts
    assert (counts.accepted, counts.rejected) == (5, 1)
    await agent.close()


async def test_drop_oldest_evicts_the_task_that_waited_longest(
    server: RunningServer, client: Client
) -> None:
    queue = await client.queues.create(
        name="dropping", role="worker", backpressure={"strategy": "drop-oldest", "maxSize": 3}
    )
    ids = [
        (await client.queues.enqueue(queue.id, priority=p)).task.id
        for p in ("critical", "normal", "low", "normal")
    ]
    await assert_shed(client, server, ids[0])  # oldest goes, whatever its priority
    for task_id in ids[1:]:
        assert (await client.tasks.get(task_id)).state == Task.STATE_QUEUED
    queue = await client.queues.get(queue.id)
    assert queue.depth == 3 and queue.counts.shed == 1


async def test_enqueue_stream_acks_every_message_with_pressure(
    server: RunningServer, client: Client
) -> None:
    queue = await client.queues.create(
        name="streamed",
        role="worker",
        backpressure={
            "strategy": "reject",
            "maxSize": 5,
            "highWatermark": 0.6,
            "lowWatermark": 0.2,
        },
    )
    requests = [queue_pb.EnqueueStreamRequest(queue_id=queue.id, sequence=n) for n in range(1, 8)]
    requests.insert(3, queue_pb.EnqueueStreamRequest(queue_id=queue.id, priority="urgent"))
    requests[3].sequence = 100
    requests.append(queue_pb.EnqueueStreamRequest(queue_id="q-none", sequence=101))

    async def produce() -> AsyncIterator[queue_pb.EnqueueStreamRequest]:
        for request in requests:
            yield request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = queue_grpc.QueueServiceStub(channel)
        acks = [ack async for ack in stub.EnqueueStream(produce(), timeout=10)]
    assert [a.sequence for a in acks] == [r.sequence for r in requests]
    by_sequence = {a.sequence: a for a in acks}
    assert (
        by_sequence[100].outcome == Ack.OUTCOME_INVALID and "priority" in by_sequence[100].message
    )
    assert by_sequence[101].outcome == Ack.OUTCOME_INVALID
    for n in range(1, 6):
        ack = by_sequence[n]
        assert ack.outcome == Ack.OUTCOME_ACCEPTED and ack.task_id and ack.depth == n
        assert ack.pressure == (n >= 3)
    for n in (6, 7):
        ack = by_sequence[n]
        assert ack.outcome == Ack.OUTCOME_REJECTED and ack.pressure and ack.depth == 5
        assert ack.retry_after.ToNanoseconds() > 0
    counts = (await client.queues.get(queue.id)).counts
    assert (counts.accepted, counts.rejected) == (5, 2)


async def test_a_restart_rebuilds_depth_and_pressure(tmp_path: Path) -> None:
    config = ServeConfig(listen="127.0.0.1:0", metrics_listen="", data_dir=tmp_path)
    running = await start_server(config, CollectorRegistry())
    try:
        async with Client(f"127.0.0.1:{running.port}") as client:
            queue = await client.queues.create(
                name="durable", role="worker", backpressure={"strategy": "reject", "maxSize": 5}
            )
            for priority in ("low", "high", "normal", "high"):
                await client.queues.enqueue(queue.id, priority=priority)
    finally:
        await running.stop(grace=1.0)
    running = await start_server(config, CollectorRegistry())
    try:
        async with Client(f"127.0.0.1:{running.port}") as client:
            again = await client.queues.get(queue.id)
            assert again.depth == 4 and again.pressure  # 4 >= 0.8 * 5
            await client.queues.enqueue(queue.id)
            with pytest.raises(RPCError) as full:
                await client.queues.enqueue(queue.id)
            assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # An agent serving the queue (named in its hello) gets the highest first
            agent = RawAgent(f"127.0.0.1:{running.port}")
            await agent.hello(role="other", queues=["durable"])
            (first,) = await agent.next_assignments()
            assert first.priority == "high"
            await agent.close()
    finally:
        await running.stop(grace=1.0)


async def test_agents_named_for_a_queue_run_its_tasks(
    server: RunningServer, client: Client
) -> None:
    from tests.support import agent_processes

    queue = await client.queues.create(
        {"name": "work-queue", "backpressure": {"strategy": "reject", "maxSize": 100}}
    )
    address = f"127.0.0.1:{server.port}"
    with agent_processes(
        address, "consumer", 2, "--queue", "work-queue", "--handler", "tests.agents.handlers:echo"
    ):
        accepted = [
            await client.queues.enqueue(queue.id, title=f"job {i}", payload={"i": i})
            for i in range(6)
        ]
        done = [await client.tasks.wait(r.task.id, timeout=30) for r in accepted]
    assert all(t.state == task_pb2.Task.STATE_SUCCEEDED for t in done)
    assert sorted(int(t.output["echo"]["i"]) for t in done) == list(range(6))
    assert {t.agent_id for t in done} <= {a.id for a in await client.agents.list(role="consumer")}
    assert (await client.queues.get(queue.id)).depth == 0


async def test_enqueue_stream_decides_ahead_but_acks_only_what_is_durable(
    server: RunningServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await client.queues.create(
        name="piped", role="worker", backpressure={"strategy": "reject", "maxSize": 100}
    )
    # Given an event store whose appends are held until the test lets them through
    store = server.coordinator.store
    original = store.write
    gate = asyncio.Event()
    appends: list[int] = []

    async def held(batch):  # type: ignore[no-untyped-def]
        await gate.wait()
        appends.append(len(batch))
        return await original(batch)

    monkeypatch.setattr(store, "write", held)
    requests = [queue_pb.EnqueueStreamRequest(queue_id=queue.id, sequence=n) for n in range(1, 51)]

    async def produce() -> AsyncIterator[queue_pb.EnqueueStreamRequest]:
        for request in requests:
            yield request

    acks: list[Ack] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = queue_grpc.QueueServiceStub(channel).EnqueueStream(produce(), timeout=30)

        async def read() -> None:
            async for ack in call:
                acks.append(ack)

        reading = asyncio.create_task(read())
        try:
            # When the producer streams 50 tasks, then all 50 are decided (queued) at once
            deadline = asyncio.get_running_loop().time() + 10
            while (await client.queues.get(queue.id)).depth < 50:
                assert asyncio.get_running_loop().time() < deadline, "no read-ahead"
                await asyncio.sleep(0.01)
            # ...but none is acknowledged while nothing is durable
            assert acks == []
        finally:
            gate.set()  # whatever happened, let the server finish
        await asyncio.wait_for(reading, 10)
    # Then every ack came, in order, and the 50 offers shared a few commits
    assert [a.sequence for a in acks] == list(range(1, 51))
    assert all(a.outcome == Ack.OUTCOME_ACCEPTED for a in acks)
    assert sum(appends) >= 50 and len(appends) <= 3, appends
