"""The handler a spawned agent runs when neither the spawn nor `godel serve --agent-exec`
names a command: it gives a freshly spawned agent something real to do, so a spawn from
the seed's JSON alone yields an agent that completes tasks."""

from __future__ import annotations

from typing import Any

from godel_grpc.agent import TaskContext


def echo(ctx: TaskContext) -> dict[str, Any]:
    """Returns the task's payload.

    It writes one debug and one info line about the task so that an attached logger
    sidecar has something to keep (or filter out) at each of those levels.
    """
    ctx.log("debug", f"echo {ctx.task_id}: payload received")
    ctx.log("info", f"echo {ctx.task_id}: returning the payload")
    return {"echo": ctx.payload, "agent": ctx.agent_name or ctx.agent_id}
