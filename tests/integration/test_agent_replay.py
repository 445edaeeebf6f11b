"""Event sourcing of an agent: the state ReplayAgent rebuilds at an event id is the state
the coordinator showed live right after that event, and a replay reads no more than a
snapshot interval of events past its snapshot.

The live states are recorded through WatchAgents, which sends the agent again after
each of its events, in the order the events are recorded; the agent is a real spawned
process whose exec command fails every tenth task, so the counters and the in-flight
number move both ways.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc._proto.godel.v1 import event_service_pb2 as event_pb
from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as event_grpc
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.core.agent_history import snapshot_name
from godel_grpc.server import RunningServer
from godel_grpc.store.base import StoredEvent

pytestmark = pytest.mark.integration

Agent = agent_pb2.Agent
FAILS_ON = "boom"
EXEC = f"sh -c 'grep -q {FAILS_ON} && exit 3; echo {{}}'"
"""Fails (exit 3) for a task whose JSON holds the word, succeeds otherwise."""


def comparable(agent: Agent) -> Agent:
    """The agent without what no event records: liveness (last heartbeat) and what the
    runtime lays over a spawned agent (pid, exit code, spawn options, and STARTING for
    a spawned agent whose link is not open, which the log knows as DISCONNECTED)."""
    copy = Agent()
    copy.CopyFrom(agent)
    for name in ("last_seen_time", "pid", "exit_code", "options"):
        copy.ClearField(name)  # type: ignore[arg-type]
    if copy.state == Agent.STATE_STARTING:
        copy.state = Agent.STATE_DISCONNECTED
    return copy


async def test_replay_at_random_event_ids_equals_the_live_state(
    server: RunningServer, client: Client
) -> None:
    # Given a watcher recording every agent's state after each change
    live: list[Agent] = []

    async def watch() -> None:
        async for agent in client.agents.watch():
            live.append(agent)

    watcher = asyncio.create_task(watch())
    await wait_until(lambda: server.coordinator.state.agent_listeners)  # watch is open
    # And an event-sourced agent (snapshot every 100 events) that runs 499 tasks:
    # registered + connected + a lease and a result per task = 1,000 events
    spawned = await client.agents.spawn(
        {
            "role": "replayed",
            "capacity": 4,
            "exec": EXEC,
            "eventSourcing": {"enabled": True, "snapshotInterval": 100},
        }
    )
    tasks = await client.tasks.submit_many(
        [
            task_request(
                role="replayed",
                max_attempts=1,
                payload={"n": n, "word": FAILS_ON if n % 10 == 9 else "fine"},
            )
            for n in range(499)
        ]
    )
    ended = await asyncio.gather(*(client.tasks.wait(t.id, timeout=60) for t in tasks))
    assert sum(t.state == t.STATE_FAILED for t in ended) == 49
    await wait_until(lambda: len(live) >= 1000)
    await server.coordinator.journal.flush()
    events = await client.events.get_for_agent(spawned.id)
    assert len(events) == 1000 and len(live) == 1000
    watcher.cancel()
    assert all(agent.id == spawned.id for agent in live)
    recorded = {event.id: comparable(agent) for event, agent in zip(events, live, strict=True)}
    assert live[-1].tasks_completed == 499 and live[-1].tasks_failed == 49
    assert max(a.in_flight for a in live) > 1  # states mid-flight are among them
    # And its events page and filter by type and id range
    await check_listing(server, spawned.id, events)
    # And its ten snapshots are written
    store = server.coordinator.store
    await wait_until_async(lambda: store.load_snapshot(snapshot_name(spawned.id, 10)))

    # When it is replayed at 50 random event ids, counting the agent's events read
    read_counts: list[int] = []
    original_read = store.read

    async def counting_read(*args: Any, **kwargs: Any) -> list[StoredEvent]:
        batch = await original_read(*args, **kwargs)
        if kwargs.get("agent_id"):
            read_counts.append(len(batch))
        return batch

    store.read = counting_read  # type: ignore[method-assign]
    try:
        for index in sorted(random.Random(6).sample(range(1000), 50)):
            event = events[index]
            read_counts.clear()
            replayed = await client.agents.replay(spawned.id, up_to_event_id=event.id)
            # Then each equals the state recorded live right after that event
            assert comparable(replayed.agent) == recorded[event.id], f"at event {event.id}"
            assert replayed.event_count == index + 1
            assert replayed.up_to_event_id == event.id
            # And at most a snapshot interval of events was read past the snapshot
            assert sum(read_counts) <= 100, (event.id, read_counts)
            assert replayed.events_read == sum(read_counts)
            if index >= 99:
                assert 0 < replayed.snapshot_position <= event.id
            else:
                assert replayed.snapshot_position == 0
    finally:
        store.read = original_read  # type: ignore[method-assign]

    # And the seed's shape works: replay(events, upTo) with the agent's events
    same = await client.agents.replay(events, events[499].id)
    assert comparable(same.agent) == recorded[events[499].id]
    latest = await client.agents.replay(spawned.id)
    assert latest.event_count == 1000
    with pytest.raises(RPCError) as past:
        await client.agents.replay(spawned.id, events[-1].id + 10_000)
    assert past.value.code == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(RPCError) as before:
        await client.agents.replay(spawned.id, events[0].id - 1)
    assert before.value.code == grpc.StatusCode.NOT_FOUND


async def wait_until(condition: Any, timeout: float = 60.0) -> None:
    """Waits for `condition()` to hold, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def wait_until_async(fetch: Any, timeout: float = 30.0) -> None:
    """Waits for `await fetch()` to return something, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while await fetch() is None:
        assert time.monotonic() < deadline, "nothing came in time"
        await asyncio.sleep(0.02)


async def check_listing(server: RunningServer, agent_id: str, events: list[Any]) -> None:
    """ListAgentEvents: pages of a filtered id range hold exactly the matching events."""
    stub = event_grpc.EventServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    low, high = events[200].id, events[700].id
    wanted = [e.id for e in events if low < e.id <= high and e.type == "task.attempt_failed"]
    got: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListAgentEvents(
            event_pb.ListAgentEventsRequest(
                agent_id=agent_id,
                types=["task.attempt_failed"],
                after_id=low,
                up_to_id=high,
                page_size=7,
                page_token=token,
            )
        )
        got += [e.id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert got == wanted and len(wanted) > 7 and pages == -(-len(wanted) // 7)
