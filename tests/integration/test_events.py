"""EventService: per-agent pages and subscriptions that switch from catch-up to live
without a gap or a duplicate."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.server import RunningServer

pytestmark = pytest.mark.integration


async def test_subscription_catches_up_then_goes_live_without_gap_or_duplicate(
    server: RunningServer, client: Client
) -> None:
    # Given a log that already holds events
    await client.tasks.submit_many([task_request(role="nobody") for _ in range(50)])
    recorded = await server.coordinator.store.last_position()
    ids: list[int] = []
    live_flags: list[bool] = []

    async def consume() -> None:
        async for update in client.events.subscribe(after_id=0):
            ids.append(update.event.id)
            live_flags.append(update.live)
            if len(ids) >= recorded + 300:
                return

    consumer = asyncio.create_task(consume())
    # When more events are appended while the subscriber reads
    for _ in range(6):
        await client.tasks.submit_many([task_request(role="nobody") for _ in range(50)])
    await asyncio.wait_for(consumer, 20)
    # Then it saw every position exactly once, in order, recorded ones first
    assert ids == list(range(1, len(ids) + 1))
    assert live_flags[0] is False and live_flags[-1] is True
    assert live_flags.index(True) >= recorded


async def test_agent_events_are_paged_and_filtered(server: RunningServer, client: Client) -> None:
    from godel_grpc._proto.godel.v1 import event_service_pb2 as event_pb
    from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as event_grpc
    from tests.support import agent_processes

    with agent_processes(
        f"127.0.0.1:{server.port}", "pager", 1, "--handler", "tests.agents.handlers:noop"
    ):
        deadline = time.monotonic() + 20
        while not [a for a in await client.agents.list(role="pager") if a.state == a.STATE_READY]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        tasks = await client.tasks.submit_many([task_request(role="pager") for _ in range(5)])
        await asyncio.gather(*(client.tasks.wait(t.id, timeout=20) for t in tasks))
    # Once the agent's link has closed, its stream of events is complete
    (agent,) = await client.agents.list(role="pager")
    while agent.state != agent.STATE_DISCONNECTED:
        assert time.monotonic() < deadline + 20
        await asyncio.sleep(0.05)
        agent = await client.agents.get(agent.id)
    await server.coordinator.journal.flush()  # the disconnect is shown before it is durable
    everything = await client.events.get_for_agent(agent.id)
    stub = event_grpc.EventServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    pages, token = [], ""
    while True:
        page = await stub.ListAgentEvents(
            event_pb.ListAgentEventsRequest(agent_id=agent.id, page_size=3, page_token=token)
        )
        pages.append([e.id for e in page.events])
        token = page.next_page_token
        if not token:
            break
    assert [i for page in pages for i in page] == [e.id for e in everything]
    assert all(len(page) <= 3 for page in pages) and len(pages) > 1
    assert [e.type for e in everything][:2] == ["agent.registered", "agent.connected"]
    leased = await stub.ListAgentEvents(
        event_pb.ListAgentEventsRequest(agent_id=agent.id, types=["task.leased"])
    )
    assert len(leased.events) == 5
    with pytest.raises(RPCError) as raised:
        await client.events.get_for_agent("ag-404")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_task_past_its_deadline_fails(server: RunningServer, client: Client) -> None:
    task = await client.tasks.submit(role="nobody-home", deadline=time.time() + 0.3)
    done = await client.tasks.wait(task.id, timeout=10)
    assert done.state == task_pb2.Task.STATE_FAILED
    assert done.error.code == "DEADLINE_EXCEEDED"
    with pytest.raises(RPCError) as past:
        await client.tasks.submit(role="w", deadline=time.time() - 1)
    assert past.value.field_violations == [("deadline", "is in the past")]
