"""Handlers that tests and demos start agents with.

Each one is a plain function so that ``godel agent --handler tests.agents.handlers:NAME``
can import it. They do one recognisable thing each, so that a test can tell from a
task's output or side effect that the task really ran, and where.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from typing import Any

from godel_grpc.agent import TaskContext, TaskFailed


def _agent(ctx: TaskContext) -> str:
    return ctx.agent_name or ctx.agent_id


def noop(ctx: TaskContext) -> dict[str, Any]:
    """Does nothing: the cheapest possible task, for throughput tests."""
    return {}


def echo(ctx: TaskContext) -> dict[str, Any]:
    """Returns the payload and the name of the agent that ran it."""
    return {"echo": ctx.payload, "agent": _agent(ctx)}


async def sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleeps ``payload["seconds"]`` (default 1) in ten steps, reporting progress.

    Being async, it is cancelled promptly, which makes it the handler of choice for
    cancellation, timeout and drain tests.
    """
    seconds = float(ctx.payload.get("seconds", 1.0))
    steps = 10
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        await ctx.progress((step + 1) / steps, f"slept {step + 1}/{steps}")
    return {"slept": seconds, "agent": _agent(ctx)}


def chatty(ctx: TaskContext) -> dict[str, Any]:
    """Writes one log line at each level, ``"<tag> <level>"`` with ``payload["tag"]``.

    The logger sidecar tests look for these lines in the sidecar's file: the ones at or
    above its level must be there, the others must not.
    """
    tag = str(ctx.payload.get("tag", "chatty"))
    for level in ("debug", "info", "warning", "error"):
        ctx.log(level, f"{tag} {level}")
    return {"logged": 4, "agent": _agent(ctx)}


def fail(ctx: TaskContext) -> dict[str, Any]:
    """Always fails, with ``payload`` choosing ``code``, ``message`` and ``retryable``."""
    raise TaskFailed(
        str(ctx.payload.get("code", "FAILED")),
        str(ctx.payload.get("message", "failed on purpose")),
        retryable=bool(ctx.payload.get("retryable", False)),
    )


def fail_when(ctx: TaskContext) -> dict[str, Any]:
    """Fails like `fail` when ``payload["fail"]`` is true; succeeds otherwise.

    Lets one agent serve both sides of a test (a saga step that fails, a convoy node
    whose failure should cancel its dependents).
    """
    if ctx.payload.get("fail"):
        return fail(ctx)
    return {"ok": True, "agent": _agent(ctx)}


def record(ctx: TaskContext) -> dict[str, Any]:
    """Appends one JSON line about the attempt to the file named by ``GODEL_TEST_RECORD``.

    The line holds ``taskId``, ``attemptId``, ``idempotencyKey`` and ``agent``, so that a
    test can count how often each task really ran (at-least-once delivery, retries,
    reassignment after an agent was lost). Each line is written with one ``write`` on a
    file opened for appending, so that several agents can share the file.
    """
    path = os.environ["GODEL_TEST_RECORD"]
    line = json.dumps(
        {
            "taskId": ctx.task_id,
            "attemptId": ctx.attempt_id,
            "idempotencyKey": ctx.idempotency_key,
            "agent": _agent(ctx),
        }
    )
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")
    return {"recorded": True}


async def allocate(ctx: TaskContext) -> dict[str, Any]:
    """Allocates ``payload["mb"]`` MiB (default 10) and holds it ``payload["seconds"]``.

    Every page is written so that the memory really counts against the process's
    resident size, which is what the monitor sidecar samples.
    """
    size = int(float(ctx.payload.get("mb", 10)) * 1024 * 1024)
    seconds = float(ctx.payload.get("seconds", 1.0))
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    await asyncio.sleep(seconds)
    return {"allocated_mb": size // (1024 * 1024), "agent": _agent(ctx)}


async def apply_once(ctx: TaskContext) -> dict[str, Any]:
    """Works for ``payload["seconds"]`` (default 0.5), then applies its effect once per
    idempotency key: the effect is a line in the file named by ``GODEL_TEST_RECORD``.

    A repeated key (an attempt run again after a crash) is recorded as a duplicate and
    not applied, the way a real agent would make its side effects idempotent.
    """
    await ctx.progress(0.0, "started")
    await asyncio.sleep(float(ctx.payload.get("seconds", 0.5)))
    applied = await asyncio.to_thread(_apply_effect, ctx.idempotency_key, ctx.task_id)
    return {"applied": applied, "agent": _agent(ctx)}


def _apply_effect(key: str, task_id: str) -> bool:
    """Appends the effect for `key` unless it was applied before; True if applied now."""
    with open(os.environ["GODEL_TEST_RECORD"], "a+", encoding="utf-8") as sink:
        fcntl.flock(sink, fcntl.LOCK_EX)
        sink.seek(0)
        done = {
            json.loads(line)["key"] for line in sink if line.strip() and '"applied": true' in line
        }
        apply = key not in done
        sink.write(json.dumps({"key": key, "taskId": task_id, "applied": apply}) + "\n")
    return apply


def _saga_input(ctx: TaskContext) -> dict[str, Any]:
    """The saga's input, as a saga step's payload carries it."""
    value = ctx.payload.get("input")
    return value if isinstance(value, dict) else {}


def record_or_fail(ctx: TaskContext) -> dict[str, Any]:
    """A saga step that records every attempt, then fails when told to by the saga input.

    Appends one JSON line per attempt (``taskId``, ``attemptId``, ``idempotencyKey``,
    ``action``, ``agent``) to the file named by ``GODEL_TEST_RECORD``, if set. Fails
    (retryably) when ``ctx.action`` is named by the saga input's ``failAt`` (a name or a
    list of names); when ``failTimes[action]`` is given, only that many attempts of the
    same idempotency key fail, counted from the file, so a compensation can be made to
    fail once and succeed when retried.
    """
    saga_input = _saga_input(ctx)
    earlier = 0
    path = os.environ.get("GODEL_TEST_RECORD")
    if path:
        with open(path, "a+", encoding="utf-8") as sink:
            fcntl.flock(sink, fcntl.LOCK_EX)
            sink.seek(0)
            earlier = sum(
                1
                for line in sink
                if line.strip() and json.loads(line).get("idempotencyKey") == ctx.idempotency_key
            )
            entry = {
                "taskId": ctx.task_id,
                "attemptId": ctx.attempt_id,
                "idempotencyKey": ctx.idempotency_key,
                "action": ctx.action,
                "agent": _agent(ctx),
            }
            sink.write(json.dumps(entry) + "\n")
    fail_at = saga_input.get("failAt") or []
    names = [fail_at] if isinstance(fail_at, str) else list(fail_at)
    limit = (saga_input.get("failTimes") or {}).get(ctx.action)
    if ctx.action in names and (limit is None or earlier < limit):
        raise TaskFailed(
            "STEP_FAILED", f"{ctx.action} failed on purpose (try {earlier + 1})", retryable=True
        )
    return {"action": ctx.action, "agent": _agent(ctx)}


def record_once(ctx: TaskContext) -> dict[str, Any]:
    """A saga step whose effect is applied once per idempotency key (see `apply_once`).

    Reads the saga input: when ``ctx.action`` is its ``failAt``, fails for good without
    applying anything; when it is its ``holdAt``, applies the effect and then waits until
    the file named by ``gate`` exists, so that a test can kill the coordinator while the
    step runs and its effect is already applied.
    """
    saga_input = _saga_input(ctx)
    if ctx.action == saga_input.get("failAt"):
        raise TaskFailed("STEP_FAILED", f"{ctx.action} failed on purpose", retryable=False)
    applied = _apply_effect(ctx.idempotency_key, ctx.task_id)
    if ctx.action == saga_input.get("holdAt"):
        while not os.path.exists(str(saga_input["gate"])):
            time.sleep(0.02)
    return {"applied": applied, "action": ctx.action, "agent": _agent(ctx)}


def remember(ctx: TaskContext) -> dict[str, Any]:
    """Counts its tasks in the agent's reflex memory (``count``), keeps
    ``payload["note"]`` there when given, and returns the memory with the score and
    lessons its assignment carried."""
    count = int(ctx.memory.get("count", 0)) + 1
    ctx.memory.set("count", count)
    if "note" in ctx.payload:
        ctx.memory.set("note", ctx.payload["note"])
    return {
        "count": count,
        "memory": ctx.memory.as_dict(),
        "score": ctx.score,
        "feedbackCount": ctx.feedback_count,
        "lessons": ctx.lessons,
        "agent": _agent(ctx),
    }
