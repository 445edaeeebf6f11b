"""ExecHandler against real subprocesses: the command-line protocol and process cleanup."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from godel_grpc.agent import ExecHandler, TaskContext, TaskFailed
from godel_grpc.agent._attempt import HandlerSpec, run_attempt

# A shell that starts a child shell, which starts a grandchild `sleep 100`; the child
# writes both pids and says "ready" on stderr once they are on disk.
SPAWN_FAMILY = (
    "sh -c 'echo $$ > child; sleep 100 & echo $! > grandchild; echo ready >&2; wait' & wait"
)


SAFETY_NET = 5.0  # seconds; only reached when something is broken


class Recorder:
    """A Reporter that keeps what it is given and flags the "ready" line."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []
        self.ready = asyncio.Event()

    def report_progress(self, task_id: str, attempt_id: str, fraction: float, message: str) -> None:
        pass

    def report_log(self, task_id: str, level: str, message: str) -> None:
        self.logs.append((level, message))
        if message == "ready":
            self.ready.set()


def make_ctx(recorder: Recorder | None = None, **fields: object) -> TaskContext:
    values: dict[str, object] = {"task_id": "t-1", "attempt_id": "a-1", "reporter": recorder}
    values.update(fields)
    return TaskContext(**values)  # type: ignore[arg-type]


async def wait_gone(pid: int) -> None:
    """Waits until `pid` has exited (a zombie counts), using a pidfd instead of polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), SAFETY_NET)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def family_pids(folder: Path) -> list[int]:
    return [int((folder / name).read_text()) for name in ("child", "grandchild")]


async def test_json_object_on_stdout_is_the_output() -> None:
    # Given a command that echoes its stdin
    handler = ExecHandler("cat")
    ctx = make_ctx(
        attempt=2,
        title="t",
        role="r",
        action="a",
        priority="high",
        payload={"n": 1},
        labels={"k": "v"},
        idempotency_key="key",
    )

    # When it runs, Then the task JSON it was given comes back as the output
    output = await handler(ctx)

    assert output == {
        "taskId": "t-1",
        "attemptId": "a-1",
        "attempt": 2,
        "title": "t",
        "role": "r",
        "action": "a",
        "priority": "high",
        "payload": {"n": 1},
        "labels": {"k": "v"},
        "idempotencyKey": "key",
    }


@pytest.mark.parametrize("printed", ["hello", "[1, 2]", ""])
async def test_anything_else_on_stdout_is_wrapped(printed: str) -> None:
    output = await ExecHandler(f"printf '%s' '{printed}'")(make_ctx())

    assert output == {"stdout": printed}


async def test_task_ids_are_in_the_environment() -> None:
    output = await ExecHandler('printf "$GODEL_TASK_ID/$GODEL_ATTEMPT_ID"')(make_ctx())

    assert output == {"stdout": "t-1/a-1"}


async def test_non_zero_exit_fails_with_the_tail_of_stderr() -> None:
    # Given a command that complains at length and exits 3
    recorder = Recorder()
    command = "printf 'x%.0s' $(seq 3000) >&2; echo >&2; echo oops >&2; exit 3"

    # When it runs
    with pytest.raises(TaskFailed) as failure:
        await ExecHandler(command)(make_ctx(recorder))

    # Then the error is retryable and names the exit code and the last of stderr
    assert failure.value.code == "EXIT_CODE"
    assert failure.value.retryable is True
    assert failure.value.message.startswith("exit code 3: ")
    assert failure.value.message.endswith("oops")
    assert len(failure.value.message) < 2 * 1024 + 50
    # And every stderr line was forwarded as an info log line
    assert recorder.logs == [("info", "x" * 3000), ("info", "oops")]


async def test_stdout_past_the_cap_fails_without_retry() -> None:
    handler = ExecHandler("head -c 100000 /dev/zero", max_stdout_bytes=1000)

    with pytest.raises(TaskFailed) as failure:
        await handler(make_ctx())

    assert failure.value.code == "OUTPUT_TOO_LARGE"
    assert failure.value.retryable is False


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # Given a command whose child started a grandchild, and a short attempt timeout
    recorder = Recorder()
    handler = ExecHandler(SPAWN_FAMILY, cwd=str(tmp_path))
    ctx = make_ctx(recorder, timeout=0.5)

    # When the attempt runs out of time
    result = await run_attempt(HandlerSpec.of(handler), ctx)

    # Then it is reported as a retryable timeout and both descendants are gone
    assert recorder.ready.is_set(), "the command never got going"
    assert result.error.code == "TIMEOUT"
    assert result.error.retryable is True
    for pid in family_pids(tmp_path):
        await wait_gone(pid)
    assert ctx.cancelled.is_set()


async def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    # Given a running command with a child and a grandchild
    recorder = Recorder()
    running = asyncio.create_task(ExecHandler(SPAWN_FAMILY, cwd=str(tmp_path))(make_ctx(recorder)))
    await asyncio.wait_for(recorder.ready.wait(), SAFETY_NET)

    # When the attempt is cancelled
    running.cancel()

    # Then the cancellation goes through and both descendants are gone
    with pytest.raises(asyncio.CancelledError):
        await running
    for pid in family_pids(tmp_path):
        await wait_gone(pid)


async def test_a_command_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    recorder = Recorder()
    command = "trap '' TERM; echo $$ > child; echo ready >&2; while :; do sleep 1; done"
    handler = ExecHandler(command, cwd=str(tmp_path), kill_grace=0.2)
    running = asyncio.create_task(handler(make_ctx(recorder)))
    await asyncio.wait_for(recorder.ready.wait(), SAFETY_NET)

    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, SAFETY_NET)
    await wait_gone(int((tmp_path / "child").read_text()))


async def test_processes_left_behind_are_killed_when_the_command_exits(tmp_path: Path) -> None:
    # Given a command that leaves a background process holding its stdout open
    command = "sleep 100 & echo $! > leftover; echo '{\"done\": true}'"

    # When it exits, Then its output arrives without waiting for the leftover
    output = await asyncio.wait_for(ExecHandler(command, cwd=str(tmp_path))(make_ctx()), SAFETY_NET)

    # And the leftover is gone
    assert output == {"done": True}
    await wait_gone(int((tmp_path / "leftover").read_text()))


def test_empty_command_is_rejected() -> None:
    with pytest.raises(ValueError):
        ExecHandler("  ")


def test_task_json_is_one_line() -> None:
    from godel_grpc.agent._exec import _task_json

    assert _task_json(make_ctx()).count(b"\n") == 1
    assert json.loads(_task_json(make_ctx()))["taskId"] == "t-1"
