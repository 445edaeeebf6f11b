"""Event-sourced agents: snapshots every `snapshotInterval` of an agent's events, and
replay of its state as of any event id.

Snapshots are built from the log, not from memory: one tail reads the durable events of
the event-sourced agents (so each has its position), through the store's per-agent
index, and folds them with `agent_fold`, the function the live state uses. Other
agents' events are never read, however busy the log; the tail stops while no agent is
event-sourced. Every `interval`-th event it saves the state under
`agent/<id>/snapshot/<k>` (k = events folded / interval) through the store's snapshot
table. Snapshots are derived data, so they stay out of the log: subscribers and
ListAgentEvents see only facts, and losing a snapshot only makes a replay read more.
Keeping every k (not only the latest) lets a replay start from the snapshot just below
any event id; the names being numbered lets it find that snapshot by a binary search
over k, a few key lookups however long the agent lived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.core import agent_fold
from godel_grpc.core.records import AgentRecord
from godel_grpc.core.upgrade import decode
from godel_grpc.errors import NotFound, OutOfRange
from godel_grpc.store.base import EventStore, StoredEvent

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_INTERVAL = 100
"""`snapshotInterval` when the spawn request gives 0."""
_READ_BATCH = 1000


def snapshot_name(agent_id: str, number: int) -> str:
    """Store name of the agent's `number`-th snapshot (after number * interval events)."""
    return f"agent/{agent_id}/snapshot/{number}"


@dataclass(frozen=True, slots=True)
class Replayed:
    """An agent's state rebuilt as of one event, and what it took."""

    agent: AgentRecord
    up_to: int
    """The event id replayed up to (inclusive)."""
    time: float
    """Unix time in seconds event `up_to` was recorded."""
    snapshot_position: int
    """Position of the snapshot started from; 0 when none was used."""
    events_read: int
    """The agent's events read from the log and folded on top of the snapshot."""
    reflex: agent_fold.ReflexState
    """The agent's reflex score and persistent memory as of event `up_to`."""


class AgentHistory:
    """Snapshots of event-sourced agents and replays of any agent."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._tail: asyncio.Task[None] | None = None
        self._folds: dict[str, AgentRecord | None] = {}
        self._reflex: dict[str, agent_fold.ReflexState] = {}
        self.intervals: dict[str, int] = {}
        """Agent id → snapshot interval, for the agents whose snapshots are written."""
        self.snapshots_written = 0
        """Snapshots written since the coordinator started, for GetPatternMetrics."""

    async def enable(self, agent_id: str, interval: int) -> None:
        """Starts writing snapshots of an agent every `interval` of its events. Call it
        before the agent has any event (before its process is started).

        Args:
            agent_id: the agent.
            interval: events per snapshot; 0 means `DEFAULT_SNAPSHOT_INTERVAL`.
        """
        self.intervals[agent_id] = interval or DEFAULT_SNAPSHOT_INTERVAL
        self._folds[agent_id] = None
        if self._tail is None or self._tail.done():
            after = await self._store.last_position()
            self._tail = asyncio.get_running_loop().create_task(
                self._run(after), name="agent snapshots"
            )

    def disable(self, agent_id: str) -> None:
        """Stops writing the agent's snapshots (those written stay)."""
        self.intervals.pop(agent_id, None)
        self._folds.pop(agent_id, None)
        self._reflex.pop(agent_id, None)

    async def close(self) -> None:
        """Stops the tail (snapshots not written yet are written by no one: replay then
        reads a little more)."""
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None

    async def _run(self, after: int) -> None:
        """Folds each event-sourced agent's new events, read by agent, after every
        commit; returns once no agent is event-sourced (`enable` starts it again)."""
        store = self._store
        position = after  # every agent's events up to here are folded
        try:
            while self._folds:
                last = await store.last_position()
                for agent_id in list(self._folds):
                    await self._catch_up(agent_id, position, last)
                position = last
                await store.wait_for_position(position)
        except asyncio.CancelledError:
            raise
        except Exception:  # a store failure stops snapshots, never the coordinator
            log.exception("agent snapshots stopped")

    async def _catch_up(self, agent_id: str, after: int, last: int) -> None:
        """Folds the agent's events with positions in (after, last]."""
        while agent_id in self._folds:
            batch = await self._store.read(after, _READ_BATCH, agent_id=agent_id, up_to=last)
            for stored in batch:
                if agent_id not in self._folds:  # disabled meanwhile
                    return
                await self._fold(stored)
            if len(batch) < _READ_BATCH:
                return
            after = batch[-1].position

    async def _fold(self, stored: StoredEvent) -> None:
        agent_id = stored.agent_id
        event = decode(stored)
        agent = agent_fold.fold(self._folds[agent_id], event)
        self._folds[agent_id] = agent
        reflex = self._reflex.setdefault(agent_id, agent_fold.ReflexState())
        reflex.apply(event)
        interval = self.intervals[agent_id]
        if agent is not None and agent.event_count % interval == 0:
            await self._store.save_snapshot(
                snapshot_name(agent_id, agent.event_count // interval),
                stored.position,
                agent_fold.to_snapshot(agent, reflex).SerializeToString(),
            )
            self.snapshots_written += 1

    async def _snapshot_at_or_below(
        self, agent_id: str, up_to: int
    ) -> tuple[int, event_pb2.AgentSnapshot] | None:
        """The agent's latest snapshot whose position is at most `up_to`: snapshots are
        numbered in log order, so an exponential then binary search over the number."""
        cache: dict[int, tuple[int, bytes] | None] = {}

        async def load(number: int) -> tuple[int, bytes] | None:
            if number not in cache:
                cache[number] = await self._store.load_snapshot(snapshot_name(agent_id, number))
            return cache[number]

        def fits(found: tuple[int, bytes] | None) -> bool:
            return found is not None and found[0] <= up_to

        if not fits(await load(1)):
            return None
        low, high = 1, 2
        while fits(await load(high)):
            low, high = high, high * 2
        while high - low > 1:  # load(low) fits, load(high) does not
            middle = (low + high) // 2
            if fits(await load(middle)):
                low = middle
            else:
                high = middle
        position, data = cache[low]  # type: ignore[misc]
        return position, event_pb2.AgentSnapshot.FromString(data)

    async def replay(self, agent_id: str, up_to: int = 0) -> Replayed:
        """The agent's state as of event `up_to` (0: the latest): the snapshot at or
        below it plus the agent's events after the snapshot up to it.

        Raises:
            OutOfRange: `up_to` is past the end of the log.
            NotFound: the agent had not registered by then (or never did).
        """
        last = await self._store.last_position()
        if up_to > last:
            raise OutOfRange(
                f"event {up_to} is past the end of the log (last event {last})",
                subject="upToEventId",
            )
        up_to = up_to or last
        agent: AgentRecord | None = None
        reflex = agent_fold.ReflexState()
        start = 0
        found = await self._snapshot_at_or_below(agent_id, up_to)
        if found is not None:
            start, snapshot = found
            agent = agent_fold.from_snapshot(snapshot)
            reflex = agent_fold.ReflexState.from_snapshot(snapshot)
        read = 0
        position = start
        while position < up_to:
            batch = await self._store.read(position, _READ_BATCH, agent_id=agent_id, up_to=up_to)
            for stored in batch:
                event = decode(stored)
                agent = agent_fold.fold(agent, event)
                reflex.apply(event)
            read += len(batch)
            if len(batch) < _READ_BATCH:
                break
            position = batch[-1].position
        if agent is None:
            raise NotFound("agent", agent_id)
        at = await self._store.read(up_to - 1, 1) if up_to else []
        return Replayed(agent, up_to, at[0].recorded_at if at else 0.0, start, read, reflex)
