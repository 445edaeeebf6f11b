"""Snapshots of event-sourced agents are built from that agent's events alone."""

from __future__ import annotations

import asyncio
from typing import Any

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.core import events
from godel_grpc.core.agent_history import AgentHistory, snapshot_name
from godel_grpc.store.base import NewEvent, StoredEvent
from godel_grpc.store.memory import InMemoryEventStore


class CountingStore(InMemoryEventStore):
    """The in-memory store, counting the rows its reads hand out, by agent filter."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_read: dict[str | None, int] = {}
        self.snapshots: asyncio.Queue[str] = asyncio.Queue()
        """Names of the snapshots saved, in order."""

    async def save_snapshot(self, name: str, position: int, data: bytes) -> None:
        await super().save_snapshot(name, position, data)
        self.snapshots.put_nowait(name)

    async def read(self, *args: Any, **filters: Any) -> list[StoredEvent]:
        rows = await super().read(*args, **filters)
        agent_id = filters.get("agent_id")
        self.rows_read[agent_id] = self.rows_read.get(agent_id, 0) + len(rows)
        return rows


def _new(event: event_pb2.Event) -> NewEvent:
    return NewEvent(
        event.stream, events.type_name(event), event.SerializeToString(), event.agent_id
    )


def _agent_events(agent_id: str, count: int) -> list[NewEvent]:
    """A registration, then `count - 1` connections of the agent."""
    registered = event_pb2.AgentRegistered(agent_id=agent_id, name=agent_id, role="worker")
    found = [events.agent_registered(registered)]
    found += [events.agent_connected(agent_id, True, 1) for _ in range(count - 1)]
    return [_new(event) for event in found]


async def test_snapshots_read_only_the_event_sourced_agents_events() -> None:
    """Given one event-sourced agent (a snapshot every 2 of its events) in a log busy
    with another agent's 3,000 events, when the agent has 4 events, then 2 snapshots
    are written and the tail read the agent's 4 events and nothing else; once the agent
    is no longer event-sourced, the tail stops."""
    store = CountingStore()
    await store.open()
    history = AgentHistory(store)
    await history.enable("ag-es", interval=2)
    mine = _agent_events("ag-es", 4)
    busy = _agent_events("ag-busy", 3_000)
    for index, event in enumerate(mine):
        await store.append([*busy[index * 750 : (index + 1) * 750], event])

    async with asyncio.timeout(10):
        written = [await store.snapshots.get() for _ in range(2)]

    assert written == [snapshot_name("ag-es", 1), snapshot_name("ag-es", 2)]
    assert store.rows_read == {"ag-es": 4}
    stored = await InMemoryEventStore.read(store, 0, 10_000, agent_id="ag-es")  # uncounted
    second = await store.load_snapshot(snapshot_name("ag-es", 2))
    assert second is not None and second[0] == stored[-1].position

    tail = history._tail
    assert tail is not None
    history.disable("ag-es")
    await store.append(_agent_events("ag-later", 1))
    await asyncio.wait_for(tail, 10)  # it returns by itself
    assert store.rows_read == {"ag-es": 4}
    await history.close()
    await store.close()
