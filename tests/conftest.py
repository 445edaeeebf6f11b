"""Fixtures: a real coordinator server on loopback, in this test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

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
