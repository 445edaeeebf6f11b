"""A subscription survives a coordinator crash: the client's subscribe reconnects on
UNAVAILABLE and resumes after the last event it delivered, so a subscriber consuming
10,000 events while they are appended ends with exactly those events, in order, though
the coordinator process was SIGKILLed and restarted in the middle (and later stopped
with SIGTERM and started again)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.client import Client, RPCError, task_request
from tests.support import CoordinatorProcess

pytestmark = pytest.mark.integration

TOTAL = 10_000
BATCH = 100
KILL_AFTER_BATCHES = 30
STOP_AFTER_BATCHES = 60


async def test_subscriber_gets_every_event_once_across_a_coordinator_kill(
    tmp_path: Path,
) -> None:
    coordinator = CoordinatorProcess(tmp_path / "data").start()
    try:
        async with Client(coordinator.address, timeout=10.0) as client:
            seen: list[event_pb2.Event] = []

            async def consume() -> None:
                async for update in client.events.subscribe(types=["task.submitted"]):
                    seen.append(update.event)
                    if len(seen) == TOTAL:
                        return

            async def produce() -> None:
                for start in range(0, TOTAL, BATCH):
                    batch = [
                        task_request(role="nobody", idempotency_key=f"k{n}")
                        for n in range(start, start + BATCH)
                    ]
                    await submit_until_accepted(client, batch)
                    if start // BATCH + 1 == KILL_AFTER_BATCHES:
                        assert len(seen) < TOTAL  # the subscriber is mid-stream
                        await asyncio.to_thread(restart, coordinator, graceful=False)
                    if start // BATCH + 1 == STOP_AFTER_BATCHES:  # and a drained stop
                        await asyncio.to_thread(restart, coordinator, graceful=True)

            consumer = asyncio.create_task(consume())
            await produce()
            await asyncio.wait_for(consumer, 120)

            # Then the subscriber saw each of the 10,000 events once, in log order
            ids = [event.id for event in seen]
            assert ids == sorted(set(ids))
            keys = [event.task_submitted.task.idempotency_key for event in seen]
            assert keys == [f"k{n}" for n in range(TOTAL)]
            # And exactly what the log holds: a fresh read from the start agrees
            again: list[int] = []
            async for update in client.events.subscribe(types=["task.submitted"]):
                again.append(update.event.id)
                if len(again) == TOTAL:
                    break
            assert again == ids
            starts = [e async for e in first(client, ["coordinator.started"], 3)]
            assert [e.coordinator_started.epoch for e in starts] == [1, 2, 3]  # it restarted
    finally:
        coordinator.stop()


def restart(coordinator: CoordinatorProcess, graceful: bool) -> None:
    """SIGKILLs (or SIGTERMs) the coordinator and starts it again on the same port and
    data."""
    port = coordinator.port
    if graceful:
        assert coordinator.terminate() == 0
    else:
        coordinator.kill()
    coordinator.start(port=port)


async def submit_until_accepted(client: Client, batch: list) -> None:  # type: ignore[type-arg]
    """Submits a batch, retrying while the coordinator is away; idempotency keys make
    a retry of a batch that was already durable a no-op."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.tasks.submit_many(batch)
            return
        except RPCError as error:
            if error.code != grpc.StatusCode.UNAVAILABLE:
                raise
            assert time.monotonic() < deadline, "the coordinator did not come back"
            await asyncio.sleep(0.05)


async def first(client: Client, types: list[str], count: int):  # type: ignore[no-untyped-def]
    """The first `count` events of these types."""
    got = 0
    async for update in client.events.subscribe(types=types):
        yield update.event
        got += 1
        if got == count:
            return
