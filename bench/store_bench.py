"""Throughput of the event stores under the append patterns the coordinator sees.

Run ``python -m bench.store_bench [DIR]``. DIR must be on the disk you care about: the
figures are bounded by fsync, so a tmpfs directory would flatter them. By default a
temporary directory is made in the current directory for that reason.

``python -m bench.store_bench --postgres postgresql://USER@HOST/DB`` measures the
PostgreSQL store instead, each scenario in a fresh database created on that server (DB
is only used to connect; the scratch databases are dropped afterwards).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import tempfile
import time
import uuid

import asyncpg  # type: ignore[import-untyped]

from godel_grpc.store.base import EventStore, NewEvent
from godel_grpc.store.postgres import PostgresEventStore
from godel_grpc.store.sqlite import SqliteEventStore

PAYLOAD = os.urandom(120)
"""Roughly the size of a serialized ``godel.v1.Event`` for a task state change."""

SCENARIOS: dict[str, tuple[int, int, int]] = {
    # name: (appends in flight, events per append, appends per in-flight slot)
    "sequential_1": (1, 1, 2_000),
    "concurrent_1000x1": (1_000, 1, 20),
    "sequential_100": (1, 100, 500),
    "concurrent_50x100": (50, 100, 20),
}
"""Sequential runs pay one commit (one fsync) per append; concurrent ones keep that many
appends in flight all the time, so the writer's group commit can share fsyncs."""


def _events(count: int, seed: int) -> list[NewEvent]:
    """`count` events, ten per stream in a row, over 1,000 streams and 50 agents."""
    return [
        NewEvent(
            f"task/t-{(seed + i // 10) % 1_000}",
            "task.progressed",
            PAYLOAD,
            f"agent-{(seed + i) % 50}",
        )
        for i in range(count)
    ]


async def _run(store: EventStore, in_flight: int, size: int, rounds: int) -> float:
    """Keeps `in_flight` tasks appending `size`-event batches; returns events/s."""
    # Built up front so that only the store is timed.
    work = [[_events(size, slot * rounds + n) for n in range(rounds)] for slot in range(in_flight)]

    async def task(batches: list[list[NewEvent]]) -> None:
        for batch in batches:
            await store.append(batch)

    start = time.perf_counter()
    await asyncio.gather(*(task(batches) for batches in work))
    return in_flight * size * rounds / (time.perf_counter() - start)


async def bench_store(path: str | os.PathLike[str]) -> dict[str, float]:
    """Measures appends/s for each of `SCENARIOS`, each on a fresh database in `path`.

    Args:
        path: a directory on the disk to measure (fsync speed is most of the answer).

    Returns:
        Events per second keyed by scenario name.
    """
    directory = pathlib.Path(path)
    results: dict[str, float] = {}
    for name, (in_flight, size, rounds) in SCENARIOS.items():
        store = SqliteEventStore(directory / f"bench-{name}.db")
        await store.open()
        try:
            results[name] = await _run(store, in_flight, size, rounds)
        finally:
            await store.close()
    return results


async def bench_postgres(url: str) -> dict[str, float]:
    """Measures appends/s for each of `SCENARIOS` against the PostgreSQL server `url`
    points at, each on a fresh database that is dropped afterwards.

    Returns:
        Events per second keyed by scenario name.
    """
    admin = await asyncpg.connect(url)
    results: dict[str, float] = {}
    try:
        for name, (in_flight, size, rounds) in SCENARIOS.items():
            database = f"godel_bench_{uuid.uuid4().hex[:12]}"
            await admin.execute(f"CREATE DATABASE {database}")
            store = PostgresEventStore(f"{url.rpartition('/')[0]}/{database}")
            try:
                await store.open()
                results[name] = await _run(store, in_flight, size, rounds)
            finally:
                await store.close()
                await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        await admin.close()
    return results


def main() -> None:
    """Prints events/s for each pattern."""
    args = sys.argv[1:]
    if args[:1] == ["--postgres"] and len(args) == 2:
        results = asyncio.run(bench_postgres(args[1]))
        for name, rate in results.items():
            print(f"{name:>20}: {rate:>12,.0f} events/s")
        return
    directory = args[0] if args else "."
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=directory) as tmp:
        results = asyncio.run(bench_store(tmp))
    for name, rate in results.items():
        print(f"{name:>20}: {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
