"""Throughput of the SQLite event store under the three append patterns the coordinator uses.

Run ``python -m bench.store_bench [DIR]``. DIR must be on the disk you care about: the
figures are bounded by fsync, so a tmpfs directory would flatter them. By default a
temporary directory is made in the current directory for that reason.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import tempfile
import time

from godel_grpc.store.base import NewEvent
from godel_grpc.store.sqlite import SqliteEventStore

SEQUENTIAL_APPENDS = 2_000
CONCURRENT_APPENDS = 1_000
CONCURRENT_ROUNDS = 20
BATCH_SIZE = 100
BATCHES = 1_000
PAYLOAD = os.urandom(120)
"""Roughly the size of a serialized ``godel.v1.Event`` for a task state change."""


def _events(count: int, streams: int) -> list[NewEvent]:
    return [
        NewEvent(f"task/t-{i % streams}", "task.progressed", PAYLOAD, f"agent-{i % 50}")
        for i in range(count)
    ]


async def _sequential(store: SqliteEventStore) -> float:
    """One-event appends, each awaited before the next: one commit (and fsync) apiece."""
    events = _events(SEQUENTIAL_APPENDS, 100)
    start = time.perf_counter()
    for event in events:
        await store.append((event,))
    return len(events) / (time.perf_counter() - start)


async def _concurrent(store: SqliteEventStore) -> float:
    """Rounds of 1,000 one-event appends in flight at once: group commit shares fsyncs."""
    rounds = [_events(CONCURRENT_APPENDS, 1_000) for _ in range(CONCURRENT_ROUNDS)]
    start = time.perf_counter()
    for events in rounds:
        await asyncio.gather(*(store.append((event,)) for event in events))
    return CONCURRENT_APPENDS * CONCURRENT_ROUNDS / (time.perf_counter() - start)


async def _batched(store: SqliteEventStore) -> float:
    """100-event appends awaited one at a time: one commit per batch."""
    batches = [_events(BATCH_SIZE, 10) for _ in range(BATCHES)]
    start = time.perf_counter()
    for batch in batches:
        await store.append(batch)
    return BATCH_SIZE * BATCHES / (time.perf_counter() - start)


async def bench_store(path: str | os.PathLike[str]) -> dict[str, float]:
    """Measures appends/s for each pattern, each on a fresh database in directory `path`.

    Returns:
        Events per second keyed by pattern: ``sequential_1``, ``concurrent_1000x1`` and
        ``sequential_100``.
    """
    directory = pathlib.Path(path)
    scenarios = {
        "sequential_1": _sequential,
        "concurrent_1000x1": _concurrent,
        "sequential_100": _batched,
    }
    results: dict[str, float] = {}
    for name, scenario in scenarios.items():
        store = SqliteEventStore(directory / f"bench-{name}.db")
        await store.open()
        try:
            results[name] = await scenario(store)
        finally:
            await store.close()
    return results


def main() -> None:
    """Prints events/s for each pattern."""
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=directory) as tmp:
        results = asyncio.run(bench_store(tmp))
    for name, rate in results.items():
        print(f"{name:>20}: {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
