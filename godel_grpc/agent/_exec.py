"""Any command line as a handler: task JSON in on stdin, output out on stdout.

This is how tools that know nothing about Godel (scripts, AI coding CLIs) become
agents. Each attempt gets a fresh ``/bin/sh -c COMMAND`` in a process group of its own,
so that a timeout or a cancellation can stop everything the command started, not just
the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from godel_grpc.agent._context import TaskContext
from godel_grpc.agent._errors import TaskFailed

_CHUNK = 64 * 1024
_STDERR_TAIL = 2 * 1024
_MAX_LINE = 8 * 1024


class ExecHandler:
    """Runs a shell command per attempt.

    Protocol with the command:

    * stdin: the task as one JSON object with ``taskId``, ``attemptId``, ``attempt``,
      ``title``, ``role``, ``action``, ``priority``, ``payload``, ``labels`` and
      ``idempotencyKey``, then end of file. ``GODEL_TASK_ID`` and ``GODEL_ATTEMPT_ID``
      are also set in its environment. For an agent with the reflex feedback loop on
      and some feedback, the object also has ``reflex``: ``score`` (0 to 5),
      ``feedbackCount`` and ``lessons`` (recent feedback comments, oldest first), and
      the environment has ``GODEL_SCORE``, ``GODEL_FEEDBACK_COUNT`` and
      ``GODEL_LESSONS`` (one lesson per line), ready to go into an AI CLI's prompt.
    * stdout: if it is a JSON object, that object is the output; anything else becomes
      ``{"stdout": text}``. More than `max_stdout_bytes` fails the attempt with
      ``OUTPUT_TOO_LARGE`` (not retryable: the same input would overflow again).
    * exit code: 0 succeeds; anything else fails with ``EXIT_CODE`` (retryable) and the
      tail of stderr in the message.
    * stderr: forwarded line by line as the task's ``info`` log lines.

    When the attempt is cancelled or times out, the process group gets SIGTERM, then
    SIGKILL once the shell has exited or `kill_grace` seconds have passed. Processes the
    command leaves behind in its group after it exits are killed too: they would hold
    its pipes open, and an attempt should not leak work past its result.
    """

    def __init__(
        self,
        command: str,
        *,
        kill_grace: float = 2.0,
        max_stdout_bytes: int = 3 * 1024 * 1024,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """Configures the handler.

        Args:
            command: the shell command line, run with ``/bin/sh -c``.
            kill_grace: seconds between SIGTERM and SIGKILL when stopping the command.
            max_stdout_bytes: largest stdout accepted. The default leaves room for the
                output to fit one 4 MiB link message.
            env: environment for the command; None inherits the agent's.
            cwd: working directory for the command; None inherits the agent's.
        """
        if not command.strip():
            raise ValueError("the command must not be empty")
        self.command = command
        self._kill_grace = kill_grace
        self._max_stdout = max_stdout_bytes
        self._env = dict(os.environ if env is None else env)
        self._cwd = cwd

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        """Runs the command for one attempt and returns its output.

        Raises:
            TaskFailed: ``EXIT_CODE`` for a non-zero exit, ``OUTPUT_TOO_LARGE`` when
                stdout overflows.
        """
        env = {**self._env, "GODEL_TASK_ID": ctx.task_id, "GODEL_ATTEMPT_ID": ctx.attempt_id}
        if ctx.feedback_count:
            env["GODEL_SCORE"] = f"{ctx.score:g}"
            env["GODEL_FEEDBACK_COUNT"] = str(ctx.feedback_count)
            env["GODEL_LESSONS"] = "\n".join(ctx.lessons)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitWatch(loop),
            "/bin/sh",
            "-c",
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
            cwd=self._cwd,
        )
        pid = transport.get_pid()
        assert protocol.stdin and protocol.stdout and protocol.stderr  # all were asked for
        stdout = _CappedReader(protocol.stdout, self._max_stdout, lambda: _kill_group(pid))
        stderr_tail = asyncio.create_task(_forward_stderr(protocol.stderr, ctx))
        helpers: list[asyncio.Task[Any]] = [
            asyncio.create_task(_feed(protocol.stdin, _task_json(ctx))),
            asyncio.create_task(stdout.read()),
            stderr_tail,
        ]
        try:
            await protocol.exited.wait()
            _kill_group(pid)  # leftovers of the command's group, see the class docstring
            # Only a process that left the group (setsid) can still hold the pipes open;
            # its output is not worth hanging the attempt for.
            await asyncio.wait(helpers, timeout=self._kill_grace)
        except BaseException:
            await self._stop(pid, protocol.exited)
            raise
        finally:
            transport.close()
            await asyncio.gather(*helpers, return_exceptions=True)
        code = transport.get_returncode()
        assert code is not None  # the shell has exited
        if stdout.overflowed:
            raise TaskFailed(
                "OUTPUT_TOO_LARGE",
                f"the command wrote more than {self._max_stdout} bytes to stdout",
                retryable=False,
            )
        if code != 0:
            tail = stderr_tail.result().decode("utf-8", errors="replace").strip()
            raise TaskFailed("EXIT_CODE", f"{_describe_exit(code)}: {tail}", retryable=True)
        return _parse_output(stdout.data.decode("utf-8", errors="replace"))

    async def _stop(self, pid: int, exited: asyncio.Event) -> None:
        """SIGTERM to the group, then SIGKILL once the shell is gone or the grace ran out."""
        _signal_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(exited.wait(), self._kill_grace)
        except TimeoutError:
            pass
        finally:
            # Also reaches children that ignored SIGTERM or outlived the shell.
            _kill_group(pid)
        await exited.wait()

    def __repr__(self) -> str:
        return f"ExecHandler({self.command!r})"


def _task_json(ctx: TaskContext) -> bytes:
    task = {
        "taskId": ctx.task_id,
        "attemptId": ctx.attempt_id,
        "attempt": ctx.attempt,
        "title": ctx.title,
        "role": ctx.role,
        "action": ctx.action,
        "priority": ctx.priority,
        "payload": ctx.payload,
        "labels": ctx.labels,
        "idempotencyKey": ctx.idempotency_key,
    }
    if ctx.feedback_count:
        task["reflex"] = {
            "score": ctx.score,
            "feedbackCount": ctx.feedback_count,
            "lessons": ctx.lessons,
        }
    return json.dumps(task).encode() + b"\n"


def _parse_output(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"stdout": text}
    return value if isinstance(value, dict) else {"stdout": text}


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # With start_new_session the shell leads a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


class _ExitWatch(asyncio.subprocess.SubprocessStreamProtocol):
    """Stream protocol that also says when the shell itself has exited.

    `Process.wait` only returns once the pipes are closed as well, and a background
    process the command left behind keeps them open; the exit alone is the signal to
    clean such leftovers up.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_CHUNK, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    # A command may exit without reading its input; that is its business, not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stdin.wait_closed()


class _CappedReader:
    """Collects a stream up to a limit, calling back once when it is exceeded."""

    def __init__(
        self, stream: asyncio.StreamReader, limit: int, on_overflow: Callable[[], None]
    ) -> None:
        self._stream = stream
        self._limit = limit
        self._on_overflow = on_overflow
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflowed = False

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    async def read(self) -> None:
        while chunk := await self._stream.read(_CHUNK):
            if self.overflowed:
                continue  # keep draining so the writer is not blocked on a full pipe
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflowed = True
                self._chunks.clear()
                self._on_overflow()
                continue
            self._chunks.append(chunk)


async def _forward_stderr(stream: asyncio.StreamReader, ctx: TaskContext) -> bytes:
    """Forwards stderr as log lines and returns its last few KB for the error message."""
    tail = b""
    partial = b""
    while chunk := await stream.read(_CHUNK):
        tail = (tail + chunk)[-_STDERR_TAIL:]
        partial += chunk
        *lines, partial = partial.split(b"\n")
        if len(partial) > _MAX_LINE:  # no newline in sight: ship what we have
            lines.append(partial)
            partial = b""
        for line in lines:
            ctx.log("info", line.decode("utf-8", errors="replace").rstrip("\r"))
    if partial:
        ctx.log("info", partial.decode("utf-8", errors="replace").rstrip("\r"))
    return tail
