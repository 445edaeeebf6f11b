"""Running one attempt: call the handler, bound it in time, turn the outcome into a result."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from google.protobuf import json_format, struct_pb2

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.agent._context import Reporter, TaskContext
from godel_grpc.agent._errors import TaskFailed
from godel_grpc.agent._memory import Memory

_log = logging.getLogger("godel_grpc.agent")

Output: TypeAlias = Mapping[str, Any] | None
"""What a handler returns: a JSON-able mapping, or None for an empty output."""

Handler: TypeAlias = Callable[[TaskContext], Awaitable[Output]] | Callable[[TaskContext], Output]
"""A task handler: an async or a plain callable taking a `TaskContext`.

Plain callables run in a worker thread so that they cannot stall the link.
"""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler and whether it must be awaited or run in a thread, decided once."""

    fn: Handler
    is_async: bool

    @classmethod
    def of(cls, fn: Handler) -> HandlerSpec:
        """Classifies `fn`, including objects whose ``__call__`` is a coroutine function."""
        if not callable(fn):
            raise TypeError(f"a handler must be callable, got {fn!r}")
        call = getattr(fn, "__call__", None)  # noqa: B004 - the bound method is what we inspect
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        return cls(fn=fn, is_async=is_async)


def context_from_assignment(
    assignment: link_pb2.TaskAssignment,
    *,
    agent_id: str,
    agent_name: str,
    reporter: Reporter | None,
    memory: Memory | None = None,
) -> TaskContext:
    """Builds the handler's view of an assignment."""
    return TaskContext(
        task_id=assignment.task_id,
        attempt_id=assignment.attempt_id,
        attempt=assignment.attempt,
        title=assignment.title,
        role=assignment.role,
        action=assignment.action,
        priority=assignment.priority,
        payload=plain_json(json_format.MessageToDict(assignment.payload)),
        labels=dict(assignment.labels),
        idempotency_key=assignment.idempotency_key,
        timeout=timeout_seconds(assignment),
        agent_id=agent_id,
        agent_name=agent_name,
        reporter=reporter,
        memory=memory,
        score=assignment.score,
        feedback_count=assignment.feedback_count,
        lessons=list(assignment.lessons),
    )


def plain_json(value: Any) -> Any:
    """Wire JSON (from a Struct) as a handler expects it: see `_whole_numbers_as_int`."""
    return _whole_numbers_as_int(value)


def _whole_numbers_as_int(value: Any) -> Any:
    """Undoes Struct's float-only numbers where that is exact.

    Handlers (and commands reading the task JSON) expect ``{"retries": 3}`` to give 3,
    not 3.0; whole floats within a double's exact integer range become ints.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    return value


def timeout_seconds(assignment: link_pb2.TaskAssignment) -> float | None:
    """The attempt's time limit; an unset or non-positive duration means none."""
    if not assignment.HasField("timeout"):
        return None
    seconds = assignment.timeout.ToTimedelta().total_seconds()
    return seconds if seconds > 0 else None


async def run_attempt(
    spec: HandlerSpec,
    ctx: TaskContext,
    *,
    max_result_bytes: int = 4 * 1024 * 1024 - 64 * 1024,
) -> link_pb2.TaskResult:
    """Runs a handler for one attempt and reports what happened.

    Every outcome a handler can produce becomes a `TaskResult`: an output, its own
    `TaskFailed`, any other exception (``HANDLER_ERROR``), running out of time
    (``TIMEOUT``) or an output that is not JSON or too big for one link message
    (``INVALID_OUTPUT``, ``OUTPUT_TOO_LARGE``). Only cancellation escapes, as
    `asyncio.CancelledError`, because the caller decides what a cancelled attempt means.

    Args:
        spec: the handler to run.
        ctx: the attempt's context; ``ctx.timeout`` bounds the run.
        max_result_bytes: largest encoded result; a bigger output is replaced by an
            error so that one huge output cannot break the link for every other result.
    """
    started = time.monotonic()
    result = link_pb2.TaskResult(task_id=ctx.task_id, attempt_id=ctx.attempt_id)
    try:
        async with asyncio.timeout(ctx.timeout) as deadline:
            output = await _call(spec, ctx)
        result.output.CopyFrom(to_struct(output))
    except TaskFailed as exc:
        _fail(result, exc.code, exc.message, exc.retryable)
    except TimeoutError as exc:
        if not deadline.expired():
            _handler_error(result, ctx, exc)
        else:
            ctx.cancelled.set()
            _fail(result, "TIMEOUT", f"attempt timed out after {ctx.timeout:g} s", True)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling() > 0:
            ctx.cancelled.set()
            raise
        # Nobody cancelled this attempt: something inside the handler leaked a
        # CancelledError. Swallowing it into an error keeps the task from hanging
        # without a result until its lease expires.
        _fail(result, "HANDLER_ERROR", "the handler raised CancelledError on its own", True)
    except _InvalidOutput as exc:
        _fail(result, "INVALID_OUTPUT", str(exc), False)
    except Exception as exc:
        _handler_error(result, ctx, exc)
    result.duration.FromNanoseconds(int((time.monotonic() - started) * 1e9))
    if result.ByteSize() > max_result_bytes:
        size = result.output.ByteSize()
        _fail(
            result,
            "OUTPUT_TOO_LARGE",
            f"output is {size} bytes encoded; the limit is {max_result_bytes}",
            False,
        )
    return result


async def _call(spec: HandlerSpec, ctx: TaskContext) -> Output:
    if spec.is_async:
        return await spec.fn(ctx)  # type: ignore[no-any-return,misc]
    return await _in_thread(spec.fn, ctx)  # type: ignore[arg-type]


async def _in_thread(fn: Callable[[TaskContext], Output], ctx: TaskContext) -> Output:
    """Runs a sync handler in a daemon thread of its own.

    Not a thread pool: a pool's threads are joined at interpreter exit, so one handler
    that ignores cancellation would keep a drained agent process from exiting. The
    agent's capacity already bounds how many of these threads exist at once.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Output] = loop.create_future()
    # Carry the caller's context variables into the thread, as asyncio.to_thread does.
    context = contextvars.copy_context()

    def settle(value: Output, error: BaseException | None) -> None:
        if future.done():  # the attempt was cancelled while the thread ran on
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    def work() -> None:
        value: Output = None
        error: BaseException | None = None
        try:
            value = context.run(fn, ctx)
        except Exception as exc:
            error = exc
        except BaseException as exc:
            # SystemExit and friends are meant for the thread's owner, not the loop.
            error = RuntimeError(f"handler raised {type(exc).__name__}")
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, value, error)

    name = f"godel-handler-{ctx.attempt_id}"
    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


class _InvalidOutput(Exception):
    pass


def to_struct(output: object) -> struct_pb2.Struct:
    """Converts a handler's return value into the wire format of an output."""
    if output is None:
        return struct_pb2.Struct()
    if not isinstance(output, Mapping):
        raise _InvalidOutput(
            f"a handler must return a mapping or None, got {type(output).__name__}"
        )
    try:
        # A JSON round trip normalises tuples and rejects what JSON cannot hold, with a
        # message that names the offending type.
        plain = json.loads(json.dumps(output))
    except (TypeError, ValueError) as exc:
        raise _InvalidOutput(f"handler output is not JSON: {exc}") from exc
    struct = struct_pb2.Struct()
    struct.update(plain)
    return struct


def _fail(result: link_pb2.TaskResult, code: str, message: str, retryable: bool) -> None:
    result.error.CopyFrom(task_pb2.TaskError(code=code, message=message, retryable=retryable))


def _handler_error(result: link_pb2.TaskResult, ctx: TaskContext, exc: Exception) -> None:
    _log.warning(
        "handler raised %s",
        type(exc).__name__,
        exc_info=exc,
        extra={"task_id": ctx.task_id, "attempt_id": ctx.attempt_id},
    )
    _fail(result, "HANDLER_ERROR", str(exc) or type(exc).__name__, True)
