"""The journal's batches: callers share one commit, but not each other's fate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from godel_grpc.core import events
from godel_grpc.core.journal import Journal
from godel_grpc.store.sqlite import SqliteEventStore


async def test_a_cancelled_caller_does_not_cancel_the_others_in_its_batch(
    tmp_path: Path,
) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    journal = Journal(store)
    journal.start()
    try:
        # Recorded back to back, both land in one batch and one commit.
        first = journal.record([events.coordinator_started(1, "test")])
        second = journal.record([events.coordinator_started(2, "test")])
        waiter = asyncio.ensure_future(first)
        await asyncio.sleep(0)
        waiter.cancel()  # e.g. the client of the RPC that recorded `first` went away
        await second  # the other caller still learns its events are durable
        await journal.flush()
        stored = await store.read()
        assert [e.type for e in stored] == ["coordinator.started", "coordinator.started"]
    finally:
        await journal.close()
        await store.close()
