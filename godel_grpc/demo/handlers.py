"""Handlers of the demo's Python agents: small stand-ins for real work.

Run as `godel agent --handler godel_grpc.demo.handlers:NAME`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from godel_grpc.agent import TaskContext, TaskFailed


async def design(task: TaskContext) -> dict[str, Any]:
    """Pretends to design something, reporting progress on the way."""
    steps = ["read the brief", "sketch components", "write the plan"]
    for index, step in enumerate(steps, start=1):
        await task.progress(index / len(steps), step)
        await asyncio.sleep(0.05)
    return {"design": f"plan for {task.title!r}", "components": 3}


async def review(task: TaskContext) -> dict[str, Any]:
    """Pretends to review a change: approves anything with a non-empty payload."""
    await asyncio.sleep(0.02)
    return {"approved": bool(task.payload), "notes": "looks fine"}


async def work(task: TaskContext) -> dict[str, Any]:
    """Does a role's part of a convoy: reads what its dependencies produced, takes a
    moment, and reports what it built on."""
    await task.progress(0.5, f"working on {task.title!r}")
    await asyncio.sleep(0.2)
    built_on = sorted(task.payload.get("dependencies", {}))
    return {"role": task.role, "did": task.title, "builtOn": built_on}


async def onboarding(task: TaskContext) -> dict[str, Any]:
    """Plays the onboarding saga's actions (createUser, sendEmail, createTrial and their
    compensations); fails the action named in the saga input's ``failAt``."""
    saga_input = task.payload.get("input", {})
    if task.action and saga_input.get("failAt") == task.action:
        raise TaskFailed("DEMO_FAILURE", f"{task.action} failed on purpose", retryable=False)
    await asyncio.sleep(0.05)
    return {"done": task.action, "for": saga_input.get("email", "")}


async def broken(task: TaskContext) -> dict[str, Any]:
    """An unhealthy dependency: hangs for ``payload["seconds"]`` (default 0.5), then
    fails. The bulkhead chapter floods a partition served by it."""
    await asyncio.sleep(float(task.payload.get("seconds", 0.5)))
    raise TaskFailed("UPSTREAM_DOWN", "the analytics store did not answer", retryable=False)
