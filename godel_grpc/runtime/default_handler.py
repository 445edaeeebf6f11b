"""The handler a spawned agent runs when neither the spawn nor `godel serve --agent-exec`
names a command: it gives a freshly spawned agent something real to do, so a spawn from
the seed's JSON alone yields an agent that completes tasks."""

from __future__ import annotations

import time
from typing import Any

from godel_grpc.agent import TaskContext

MAX_WORK_SECONDS = 10.0
"""Longest a task may ask the default handler to work (`workSeconds` in its payload)."""


def echo(ctx: TaskContext) -> dict[str, Any]:
    """Returns the task's payload, after `workSeconds` (from the payload, at most 10) of
    pretend work, so that a demo or a test can give spawned agents work that takes time
    without naming a command.

    It writes one debug and one info line about the task so that an attached logger
    sidecar has something to keep (or filter out) at each of those levels.
    """
    ctx.log("debug", f"echo {ctx.task_id}: payload received")
    work = ctx.payload.get("workSeconds", 0)
    if isinstance(work, int | float) and work > 0:
        time.sleep(min(float(work), MAX_WORK_SECONDS))
    ctx.log("info", f"echo {ctx.task_id}: returning the payload")
    return {"echo": ctx.payload, "agent": ctx.agent_name or ctx.agent_id}
