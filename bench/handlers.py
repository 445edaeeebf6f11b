"""Handlers for the benchmark's agents.

Run as ``godel agent --handler bench.handlers:noop``. The handler does nothing so that
a benchmark measures the coordinator, the link and the SDK, never the work itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from godel_grpc.agent import TaskContext


async def noop(ctx: TaskContext) -> dict[str, Any]:
    """Succeeds at once with an empty output (async, so no worker thread is involved)."""
    return {}


PAUSE = float(os.environ.get("BENCH_PAUSE_SECONDS", "0.004"))
"""Seconds `pause` works per task (``BENCH_PAUSE_SECONDS``, default 4 ms)."""


async def pause(ctx: TaskContext) -> dict[str, Any]:
    """Works `PAUSE` seconds: a slow consumer, for the backpressure runs, where the
    producer must outpace the agents for the queue to fill."""
    await asyncio.sleep(PAUSE)
    return {}
