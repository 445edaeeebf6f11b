"""An in-memory event store: the same contract as the durable backends, minus durability.

Tests and demos use it to exercise code written against `EventStore` without touching a
disk. It follows the SQLite backend's semantics exactly (the shared test suite in
``tests/unit/test_store.py`` holds both to them), so a test that passes here means the
same thing there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from godel_grpc.store.base import (
    ANY_VERSION,
    EventStore,
    LogProgress,
    NewEvent,
    StoreClosed,
    StoredEvent,
    WrongExpectedVersion,
)

_NEW, _OPEN, _CLOSED = 0, 1, 2


class InMemoryEventStore(EventStore):
    """Keeps the log in a list (position ``p`` lives at index ``p - 1``).

    Everything runs on the event loop thread and never awaits while it mutates state, so
    each call is atomic without a lock. Nothing survives the process.
    """

    def __init__(self) -> None:
        self._state = _NEW
        self._events: list[StoredEvent] = []
        self._versions: dict[str, int] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._progress = LogProgress()

    async def open(self) -> None:
        """Marks the store usable; there is nothing to create."""
        if self._state == _CLOSED:
            raise RuntimeError("an event store cannot be reopened after close")
        self._state = _OPEN

    async def close(self) -> None:
        """Stops accepting appends and wakes every `wait_for_position` caller."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._progress.close()

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise StoreClosed("the event store is closed")
            raise RuntimeError("the event store is not open; call open() first")

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Appends `events` all-or-none.

        Each event's `expected_version` is compared with its stream's version just
        before that event, counting earlier events of the same call.
        """
        self._check_open()
        if not events:
            return []
        versions = self._versions
        staged: dict[str, int] = {}
        for event in events:
            stream = event.stream
            current = staged.get(stream)
            if current is None:
                current = versions.get(stream, 0)
            expected = event.expected_version
            if expected != ANY_VERSION and expected != current:
                raise WrongExpectedVersion(stream, expected, current)
            staged[stream] = current + 1
        now = time.time()
        position = len(self._events)
        stored: list[StoredEvent] = []
        for event in events:
            position += 1
            version = versions.get(event.stream, 0) + 1
            versions[event.stream] = version
            stored.append(
                StoredEvent(
                    position, event.stream, version, event.type, event.data, event.agent_id, now
                )
            )
        self._events.extend(stored)
        self._progress.advance(position)
        return stored

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
        """Scans the log from `after`; fine for test-sized logs."""
        self._check_open()
        if limit <= 0:
            return []
        start = max(after, 0)
        end = len(self._events) if up_to is None else max(min(up_to, len(self._events)), 0)
        wanted = frozenset(types)
        found: list[StoredEvent] = []
        for event in self._events[start:end]:
            if stream is not None and event.stream != stream:
                continue
            if agent_id is not None and event.agent_id != agent_id:
                continue
            if wanted and event.type not in wanted:
                continue
            found.append(event)
            if len(found) >= limit:
                break
        return found

    async def last_position(self) -> int:
        """Length of the log, since positions are gap-free from 1."""
        return len(self._events)

    async def wait_for_position(self, after: int, timeout: float | None = None) -> int:
        """Sleeps until the log grows past `after`, the store closes, or `timeout` passes."""
        return await self._progress.wait_past(after, timeout)

    async def save_snapshot(self, name: str, position: int, data: bytes) -> None:
        """Replaces the snapshot of `name`."""
        self._check_open()
        self._snapshots[name] = (position, data)

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        """Returns the snapshot of `name`, if any."""
        self._check_open()
        return self._snapshots.get(name)
