"""`bench.raw_relay`, the round-trip floor of `make bench`, measures what it says.

The floor only means something if its durable round trips each commit before the
answer and its volatile ones do not: the relay's database is counted after a run.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import raw_relay
from bench.procs import PYTHON, Children, read_json_line

pytestmark = pytest.mark.integration

SAMPLES = 20
WARMUP = 5


async def test_durable_round_trips_commit_once_each_and_volatile_ones_never(
    tmp_path: Path,
) -> None:
    (tmp_path / "logs").mkdir()
    children = Children(tmp_path / "logs")
    try:
        relay = await children.start(
            "relay", [PYTHON, "-m", "bench.raw_relay", "serve", str(tmp_path)], pipes=True
        )
        port = (await read_json_line(relay))["port"]
        await children.start("worker", [PYTHON, "-m", "bench.raw_relay", "work", str(port)])

        trips = await raw_relay.round_trips(f"127.0.0.1:{port}", SAMPLES, WARMUP)

        assert [len(trips.durable), len(trips.volatile), len(trips.streamed)] == [SAMPLES] * 3
        assert all(seconds > 0 for seconds in trips.durable + trips.volatile + trips.streamed)
        with sqlite3.connect(tmp_path / "relay.db") as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM results").fetchone()
        # Unary and streamed durable trips, warm-up included; the volatile ones add none.
        assert rows == 2 * (SAMPLES + WARMUP)
    finally:
        await children.kill_all()
