"""Fixtures: a real coordinator server on loopback, in this test's event loop."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from godel_grpc import heap
from godel_grpc.client import Client
from godel_grpc.config import ServeConfig
from godel_grpc.server import RunningServer, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A coordinator on 127.0.0.1 (free port) with SQLite in a fresh directory."""
    config = ServeConfig(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        heartbeat_interval=0.5,
        heartbeat_timeout=3.0,
    )
    running = await start_server(config, CollectorRegistry())
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[Client]:
    """A client connected to `server`."""
    async with Client(f"127.0.0.1:{server.port}", timeout=10.0) as connected:
        yield connected


@pytest.fixture
def serving_heap() -> Iterator[None]:
    """This process's garbage collector set as `godel serve` sets it (`heap.settle`)
    for the test, and restored after.

    For timings of a coordinator served in the test's own process: there, a full
    collection walks every earlier test's leftovers (40 ms was seen), which `godel serve`
    never does, and one such pause decides a p99 of a few hundred samples.
    """
    thresholds = gc.get_threshold()
    heap.settle()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
