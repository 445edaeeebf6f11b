"""Handlers for the benchmark's agents.

Run as ``godel agent --handler bench.handlers:noop``. The handler does nothing so that
a benchmark measures the coordinator, the link and the SDK, never the work itself.
"""

from __future__ import annotations

from typing import Any

from godel_grpc.agent import TaskContext


async def noop(ctx: TaskContext) -> dict[str, Any]:
    """Succeeds at once with an empty output (async, so no worker thread is involved)."""
    return {}
