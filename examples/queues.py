"""The seed's backpressure queue (section 8): `high-volume-queue`, shed-load, 10,000
tasks at most, pressure from 80% until it falls below 30%.

A producer streams 11,000 tasks into it over one `EnqueueStream` (every task gets an
ack: accepted, shed or rejected, with the queue's depth and pressure) while no agent
drains it: 10,000 of mixed priority fill it, and pressure turns on at 8,000; then 500
low-priority newcomers are shed (nothing queued ranks below them) and 500 critical ones
each evict the oldest low-priority task (every eviction is a ``task.cancelled`` event
with code SHED). Every task is accounted for in GetQueue's counters. Agents that name
the queue (``godel agent --queue high-volume-queue``) would drain it; the script deletes
it instead, which cancels what waits. Needs only a coordinator:

    godel serve &
    python examples/queues.py --coordinator 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc

from godel_grpc._proto.godel.v1 import queue_pb2
from godel_grpc._proto.godel.v1 import queue_service_pb2 as queue_pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as queue_grpc
from godel_grpc.client import Client

HIGH_VOLUME_QUEUE = {
    "name": "high-volume-queue",
    "backpressure": {
        "strategy": "shed-load",  # Drop low-priority when full
        "maxSize": 10000,
        "highWatermark": 0.8,
        "lowWatermark": 0.3,
    },
}
Ack = queue_pb.EnqueueStreamResponse


def priorities() -> list[str]:
    """What the producer sends, in order."""
    mixed = [("low", "normal", "high")[i % 3] for i in range(10_000)]
    return mixed + ["low"] * 500 + ["critical"] * 500


async def run(client: Client, say: Callable[[str], None] = print) -> queue_pb2.Queue:
    """Runs the story above; returns the queue as it was before it was deleted."""
    queue = await client.queues.create(HIGH_VOLUME_QUEUE)
    config = queue.backpressure
    say(
        f"created {queue.name} ({queue.id}): {config.strategy}, maxSize {config.max_size:,}, "
        f"watermarks {config.high_watermark:.0%} / {config.low_watermark:.0%}"
    )
    try:
        sent = priorities()
        requests = [
            queue_pb.EnqueueStreamRequest(
                queue_id=queue.id, sequence=i + 1, priority=priority, title=f"{priority} #{i + 1}"
            )
            for i, priority in enumerate(sent)
        ]

        async def produce() -> AsyncIterator[queue_pb.EnqueueStreamRequest]:
            for request in requests:
                yield request

        outcomes: Counter[tuple[str, str]] = Counter()
        pressure_on_at = 0
        async with grpc.aio.insecure_channel(client.address) as channel:
            stub = queue_grpc.QueueServiceStub(channel)
            async for ack in stub.EnqueueStream(produce(), timeout=120):
                outcome = Ack.Outcome.Name(ack.outcome).removeprefix("OUTCOME_").lower()
                outcomes[sent[ack.sequence - 1], outcome] += 1
                if ack.pressure and not pressure_on_at:
                    pressure_on_at = ack.depth
                    say(f"  ack #{ack.sequence:,}: pressure ON at depth {ack.depth:,}")
        say(f"streamed {len(sent):,} tasks; acks by priority and outcome:")
        for (priority, outcome), count in sorted(outcomes.items()):
            say(f"    {priority:<9} {outcome:<9} {count:>6,}")
        shown = await client.queues.get(queue.id)
        counts = shown.counts
        say(
            f"queue: depth {shown.depth:,}, pressure {'on' if shown.pressure else 'off'}; "
            f"accepted {counts.accepted:,}, shed {counts.shed:,} (newcomers refused and "
            f"tasks evicted), rejected {counts.rejected:,}"
        )
        for priority in ("low", "normal", "high", "critical"):
            each = shown.priority_counts[priority]
            say(f"    {priority:<9} accepted {each.accepted:>6,}  shed {each.shed:>5,}")
        total = shown.depth + counts.shed + counts.rejected
        say(
            f"every task accounted for: {shown.depth:,} queued + {counts.shed:,} shed + "
            f"{counts.rejected:,} rejected = {total:,} of {len(sent):,} sent"
        )
        return shown
    finally:
        await client.queues.delete(queue.id)
        say(f"deleted {queue.name}: its waiting tasks were cancelled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default="127.0.0.1:50051")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.coordinator) as client:
            await run(client)

    asyncio.run(go())


if __name__ == "__main__":
    main()
