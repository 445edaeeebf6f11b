"""The sidecars as the runtime runs them: real `godel-sidecar-logger` and
`godel-sidecar-monitor` processes beside real agent processes and a real coordinator.

Every wait is on something observable (a line on a pipe, a record on a Tail stream, a
process exit), with a timeout; nothing sleeps in the hope that time fixes a race.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from godel_grpc._proto.godel.v1 import (
    log_record_pb2,
    logger_sidecar_service_pb2,
    logger_sidecar_service_pb2_grpc,
    monitor_sidecar_service_pb2,
    monitor_sidecar_service_pb2_grpc,
    task_pb2,
)
from godel_grpc.agent import Agent, ExecHandler
from godel_grpc.client import Client
from godel_grpc.server import RunningServer
from sidecars._serving import SidecarServer
from sidecars.logger.book import LogBook
from sidecars.logger.server import serve_logger
from sidecars.logger.writer import RotatingJsonLines
from tests.support import PYTHON, ROOT, LineReader, agent_processes, child_env, require_tool

pytestmark = pytest.mark.integration

LogRecord = log_record_pb2.LogRecord
TailRequest = logger_sidecar_service_pb2.TailRequest
Task = task_pb2.Task
LEVELS = ("debug", "info", "warning", "error")
MiB = 1024 * 1024


class SidecarProcess:
    """A sidecar child process; `info` is its ``listening`` line."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        self.out = LineReader(self.proc.stdout)
        self.log = LineReader(self.proc.stderr)
        self.info: dict[str, Any] = json.loads(
            self.out.wait_for(lambda line: '"listening"' in line, timeout=20)
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.info['port']}"

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def sidecar(module: str, *args: str) -> Iterator[SidecarProcess]:
    process = SidecarProcess(module, *args)
    try:
        yield process
    finally:
        process.stop()


def logger_process(directory: Path, *args: str) -> AbstractContextManager[SidecarProcess]:
    return sidecar("sidecars.logger", "--listen", "127.0.0.1:0", "--dir", str(directory), *args)


def file_entries(directory: Path) -> list[dict[str, Any]]:
    """Every record in the logger's files, oldest first."""

    def age(path: Path) -> int:  # agent.log.2 is older than agent.log.1, than agent.log
        suffix = path.name.removeprefix("agent.log").lstrip(".")
        return int(suffix) if suffix else 0

    entries = []
    paths = sorted(directory.glob("agent.log*"), key=age, reverse=True)
    for path in paths:
        entries += [json.loads(line) for line in path.read_text().splitlines() if line]
    return entries


def file_sizes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in directory.iterdir()}


def per_level(tag: str, task_id: str = "") -> list[LogRecord]:
    return [LogRecord(level=lv, message=f"{tag} {lv}", task_id=task_id) for lv in LEVELS]


async def tail(
    stub: logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub, **request: Any
) -> list[LogRecord]:
    return [response.record async for response in stub.Tail(TailRequest(**request))]


# The logger sidecar.


async def test_logger_keeps_what_is_at_or_above_its_level(tmp_path: Path) -> None:
    with logger_process(tmp_path, "--level", "warning", "--agent-id", "a-1") as logger:
        async with grpc.aio.insecure_channel(logger.address) as channel:
            stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(channel)
            # When the agent ships one record per level for two tasks
            answer = await stub.Ship(iter(per_level("one", "t-1") + per_level("two", "t-2")))
            # Then debug and info are filtered, the rest are in the file and in Tail
            assert (answer.received, answer.written, answer.filtered) == (8, 4, 4)
            kept = ["one warning", "one error", "two warning", "two error"]
            assert [e["message"] for e in file_entries(tmp_path)] == kept
            assert {e["agentId"] for e in file_entries(tmp_path)} == {"a-1"}
            assert [r.message for r in await tail(stub, lines=100)] == kept
            assert [r.message for r in await tail(stub, lines=1, task_id="t-1")] == ["one error"]
            # And a Tail asking for too much is refused
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await tail(stub, lines=10_001)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert logger.terminate() == 0


async def test_logger_rotates_and_tail_still_returns_the_newest(tmp_path: Path) -> None:
    with logger_process(tmp_path, "--level", "debug", "--max-bytes", "2048", "--backups", "2") as (
        logger
    ):
        async with grpc.aio.insecure_channel(logger.address) as channel:
            stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(channel)
            # When far more than three files' worth of records arrive
            records = [LogRecord(level="info", message=f"record {n:03d}") for n in range(1, 201)]
            answer = await stub.Ship(iter(records))
            assert answer.written == 200
            # Then at most --backups rotated files are kept, each within --max-bytes
            sizes = file_sizes(tmp_path)
            assert sorted(sizes) == ["agent.log", "agent.log.1", "agent.log.2"]
            assert all(size <= 2048 for size in sizes.values())
            # And Tail returns the newest records, oldest first
            newest = await tail(stub, lines=5)
            assert [r.message for r in newest] == [f"record {n}" for n in range(196, 201)]
            assert [r.sequence for r in newest] == list(range(196, 201))
            # Even when the newest N span a rotation
            kept = file_entries(tmp_path)
            spanning = await tail(stub, lines=len(kept))
            assert [r.sequence for r in spanning] == [e["sequence"] for e in kept]
        assert logger.terminate() == 0


async def test_logger_follow_streams_new_records_until_it_stops(tmp_path: Path) -> None:
    with logger_process(tmp_path, "--level", "info") as logger:
        async with grpc.aio.insecure_channel(logger.address) as channel:
            stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(channel)
            # Given a follower that starts before anything was written
            follower = stub.Tail(TailRequest(lines=10, follow=True, min_level="warning"))
            stream = aiter(follower)
            # When records arrive on two separate Ship streams
            await stub.Ship(iter(per_level("first")))
            await stub.Ship(iter(per_level("second")))
            # Then it sees each new warning and error, in order
            got = [(await asyncio.wait_for(anext(stream), 10)).record.message for _ in range(4)]
            assert got == ["first warning", "first error", "second warning", "second error"]
            # And when the sidecar is stopped, the stream ends and the process exits 0
            assert await asyncio.to_thread(logger.terminate) == 0
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(anext(stream), 10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


# The monitor sidecar.

# The watched "agent": it holds 200 MB itself and runs a busy loop in a child, the way
# an --exec agent's work runs in child processes.
AGENT_SCRIPT = """
import subprocess, sys
block = bytearray(200 * 1024 * 1024)
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print("ready", flush=True)
child.wait()
"""


@contextmanager
def busy_agent() -> Iterator[subprocess.Popen[bytes]]:
    """The watched process, in a group of its own so its busy child dies with it."""
    proc = subprocess.Popen(
        [PYTHON, "-c", AGENT_SCRIPT], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def monitor_process(pid: int, *args: str) -> AbstractContextManager[SidecarProcess]:
    return sidecar(
        "sidecars.monitor",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--pid",
        str(pid),
        *args,
    )


async def test_monitor_sees_the_trees_real_memory_and_cpu_and_exits_with_it() -> None:
    with (
        busy_agent() as agent,
        monitor_process(agent.pid, "--interval", "0.2", "--agent-id", "a-1") as monitor,
    ):
        assert monitor.info["metrics_port"] > 0
        async with grpc.aio.insecure_channel(monitor.address) as channel:
            stub = monitor_sidecar_service_pb2_grpc.MonitorSidecarServiceStub(channel)
            # Within a few samples, the 200 MB and the busy child show up
            samples = []
            async for response in stub.WatchSamples(
                monitor_sidecar_service_pb2.WatchSamplesRequest()
            ):
                samples.append(response.sample)
                if len(samples) >= 3 and samples[-1].cpu_percent > 50:
                    break
                assert len(samples) < 15, samples[-1]
            last = samples[-1]
            assert last.pid == agent.pid and last.agent_id == "a-1"
            assert last.memory_rss_bytes >= 200 * MiB
            assert last.cpu_percent > 50
            assert last.process_count == 2 and last.threads >= 2 and last.open_fds > 0
            # When the agent process exits, the monitor ends its watchers and exits 0
            watch = stub.WatchSamples(monitor_sidecar_service_pb2.WatchSamplesRequest())
            watched = aiter(watch)
            await asyncio.wait_for(anext(watched), 10)
            await asyncio.to_thread(kill_group, agent)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await asyncio.wait_for(anext(watched), 10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.to_thread(monitor.proc.wait, 10) == 0
        monitor.log.wait_for(lambda line: "the agent process exited" in line, timeout=5)


async def test_monitor_metrics_pass_promtool() -> None:
    promtool = require_tool("promtool")
    with (
        busy_agent() as agent,
        monitor_process(
            agent.pid, "--interval", "0.2", "--agent-id", "a-1", "--metrics", "cpu,memory,io"
        ) as monitor,
    ):
        async with grpc.aio.insecure_channel(monitor.address) as channel:
            stub = monitor_sidecar_service_pb2_grpc.MonitorSidecarServiceStub(channel)
            # Two scheduled samples in, the gauges hold real figures
            watch = aiter(stub.WatchSamples(monitor_sidecar_service_pb2.WatchSamplesRequest()))
            for _ in range(2):
                await asyncio.wait_for(anext(watch), 10)
        url = f"http://127.0.0.1:{monitor.info['metrics_port']}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
        assert monitor.terminate() == 0
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("godel_agent_")
    }
    assert values['godel_agent_memory_rss_bytes{agent_id="a-1"}'] >= 200 * MiB
    assert 'godel_agent_cpu_percent{agent_id="a-1"}' in values
    assert 'godel_agent_io_read_bytes{agent_id="a-1"}' in values
    assert not any(
        name.startswith(("godel_agent_threads", "godel_agent_open_fds")) for name in values
    )  # not asked for, not exported


# An agent with its logger.


async def follow_until(
    address: str, task_id: str, last_message: str, timeout: float = 20.0
) -> list[LogRecord]:
    """The records of `task_id`, oldest first, up to the one saying `last_message`."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = logger_sidecar_service_pb2_grpc.LoggerSidecarServiceStub(channel)
        seen: list[LogRecord] = []

        async def read() -> None:
            async for response in stub.Tail(TailRequest(lines=100, follow=True, task_id=task_id)):
                seen.append(response.record)
                if response.record.message == last_message:
                    return

        await asyncio.wait_for(read(), timeout)
        return seen


async def test_an_agent_ships_its_task_logs_and_outlives_its_logger(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    coordinator = f"127.0.0.1:{server.port}"
    with (
        logger_process(tmp_path, "--level", "info") as logger,
        agent_processes(
            coordinator,
            "chatty",
            1,
            "--handler",
            "tests.agents.handlers:chatty",
            "--logger",
            logger.address,
        ) as (agent,),
    ):
        # When a task logs one line per level
        task = await client.tasks.submit(role="chatty", payload={"tag": "first"})
        assert (await client.tasks.wait(task.id, timeout=20)).state == Task.STATE_SUCCEEDED
        # Then the lines at or above info reach the logger's file, debug does not
        shipped = await follow_until(logger.address, task.id, "first error")
        assert [r.message for r in shipped] == ["first info", "first warning", "first error"]
        entries = [e for e in file_entries(tmp_path) if e["taskId"] == task.id]
        assert [e["message"] for e in entries] == ["first info", "first warning", "first error"]
        assert {e["source"] for e in entries} == {"task"}
        assert all(e["agentId"] and e["fields"]["attemptId"] for e in entries)
        # And the agent's own records at info and above are there too
        own = [e for e in file_entries(tmp_path) if e["source"].startswith("godel_grpc.agent")]
        assert any(e["message"] == "connected" for e in own)

        # When the logger is killed outright
        logger.proc.send_signal(signal.SIGKILL)
        logger.proc.wait(10)
        agent.log.wait_for(lambda line: "logger sidecar unavailable" in line, timeout=10)
        # Then the agent keeps completing tasks
        tasks = [
            await client.tasks.submit(role="chatty", payload={"tag": f"after {n}"})
            for n in range(3)
        ]
        for submitted in tasks:
            done = await client.tasks.wait(submitted.id, timeout=20)
            assert done.state == Task.STATE_SUCCEEDED
        assert agent.proc.poll() is None


class InProcessLogger:
    def __init__(self, book: LogBook, server: SidecarServer) -> None:
        self.book = book
        self.server = server
        self.address = f"127.0.0.1:{server.port}"


@pytest.fixture
async def in_process_logger(tmp_path: Path) -> AsyncIterator[InProcessLogger]:
    book = LogBook(RotatingJsonLines(tmp_path / "logs"), level="debug")
    await book.start()
    served = await serve_logger(book, "127.0.0.1:0")
    try:
        yield InProcessLogger(book, served)
    finally:
        await book.begin_close()
        await served.stop(0)
        await book.close()


async def test_an_exec_commands_stderr_is_shipped_as_stderr(
    server: RunningServer, client: Client, in_process_logger: InProcessLogger
) -> None:
    # Given an SDK agent with a logger whose handler is a command writing to stderr
    script = "import sys; print('compiling', file=sys.stderr); print('{}')"
    agent = Agent(f"127.0.0.1:{server.port}", role="builder", logger=in_process_logger.address)
    agent.handler(ExecHandler(f'{sys.executable} -c "{script}"'))
    async with agent:
        # When it runs a task
        task = await client.tasks.submit(role="builder")
        assert (await client.tasks.wait(task.id, timeout=20)).state == Task.STATE_SUCCEEDED
        (record,) = await follow_until(in_process_logger.address, task.id, "compiling")
    # Then the command's stderr line is in the sidecar, marked as stderr, and nothing dropped
    assert (record.level, record.source, record.agent_id) == ("info", "stderr", agent.agent_id)
    assert agent.logs_dropped == 0
