"""The event store interface every backend implements.

The coordinator's durable state is nothing but an append-only log of events. A backend
must make `append` durable before it returns (group commit: appends that arrive while a
write is in progress share the next transaction and its one fsync), keep a global
position that increases by one per event, and number events within their stream.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

ANY_VERSION = -1
"""`expected_version` that accepts whatever version the stream is at."""

NO_STREAM = 0
"""`expected_version` that requires the stream not to exist yet."""


class NewEvent(NamedTuple):
    """An event to append (a named tuple: three are made per task, and a tuple is made
    in less than half the time of a frozen dataclass).

    Attributes:
        stream: the stream it belongs to, for example ``"task/t-12"``.
        type: the event type, for example ``"task.submitted"``.
        data: the serialized ``godel.v1.Event`` (payload set, position fields unset).
        agent_id: the agent the event concerns, or ``""``; indexed for per-agent reads.
        expected_version: the stream version the writer believes is current
            (`ANY_VERSION` to skip the check, `NO_STREAM` for a new stream). A mismatch
            fails the append with `WrongExpectedVersion` and writes nothing of its batch.
        new_stream: the writer knows the stream is new (its name holds a fresh id), so
            the store may skip looking its version up. Were it wrong, the append fails
            on the unique (stream, version) index instead of writing a duplicate.
    """

    stream: str
    type: str
    data: bytes
    agent_id: str = ""
    expected_version: int = ANY_VERSION
    new_stream: bool = False


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as recorded: position and stream version assigned by the store."""

    position: int
    stream: str
    stream_version: int
    type: str
    data: bytes
    agent_id: str
    recorded_at: float
    """Unix time in seconds when the batch holding the event was committed."""


class WrongExpectedVersion(Exception):
    """An append's `expected_version` did not match the stream's current version."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class StoreClosed(Exception):
    """The store was closed; no more appends are accepted."""


class LogProgress:
    """A backend's last durable position, and sleeping until it moves: each advance
    wakes every waiter once, so `EventStore.wait_for_position` never polls."""

    def __init__(self) -> None:
        self.position = 0
        """The newest position known to be durable."""
        self._changed = asyncio.Event()
        self._closed = False

    def advance(self, position: int) -> None:
        """Records a newer durable position (an older one is ignored)."""
        if position > self.position:
            self.position = position
            self._wake()

    def close(self) -> None:
        """Wakes every waiter for good: the store is closed."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, after: int, timeout: float | None) -> int:
        """Sleeps until the position passes `after`, the store closes, or `timeout`
        seconds pass; returns the position then."""
        try:
            async with asyncio.timeout(timeout):
                while self.position <= after and not self._closed:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.position


class EventStore(abc.ABC):
    """An append-only, totally ordered event log with snapshots."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Creates the schema if needed and starts the writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finishes pending appends, then releases every resource. Idempotent."""

    @abc.abstractmethod
    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Appends `events` atomically (all or none), in order, and returns them as stored.

        Returns only once the events are durable. Concurrent calls are batched into one
        transaction by the backend; each call still succeeds or fails on its own (a
        version conflict in one call does not fail the others in the same transaction).
        """

    async def write(self, events: Sequence[NewEvent]) -> None:
        """Like `append`, for callers that need only durability, not the stored events:
        backends may skip building them."""
        await self.append(events)

    @abc.abstractmethod
    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        *,
        stream: str | None = None,
        agent_id: str | None = None,
        types: Sequence[str] = (),
        up_to: int | None = None,
    ) -> list[StoredEvent]:
        """Returns up to `limit` events with position > `after` (and <= `up_to`), oldest first,
        optionally only those of one stream, one agent, or some types."""

    @abc.abstractmethod
    async def last_position(self) -> int:
        """Position of the newest durable event, 0 for an empty log."""

    @abc.abstractmethod
    async def wait_for_position(self, after: int, timeout: float | None = None) -> int:
        """Waits until the log has an event with position > `after` (or `timeout` seconds
        pass) and returns the last durable position. Lets subscribers go live without
        polling."""

    def failure(self) -> asyncio.Future[BaseException] | None:
        """A future that resolves, with the reason, if the open store finds out it can no
        longer be written to without being asked to write (a lost database connection
        that held the log's lock); None for backends that only learn it from an append.
        The owner should stop: memory can no longer be made durable."""
        return None

    @abc.abstractmethod
    async def save_snapshot(self, name: str, position: int, data: bytes) -> None:
        """Durably stores a snapshot of state `name` as of `position`, replacing older ones."""

    @abc.abstractmethod
    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        """Returns the latest snapshot of `name` as (position, data), or None."""
