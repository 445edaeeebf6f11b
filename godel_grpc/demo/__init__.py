"""`godel demo`: a coordinator, real agent processes and tasks, end to end.

Starts `godel serve` on free loopback ports with a scratch data directory, starts agent
processes (Python handlers and one `--exec` agent wrapping a shell command), submits
tasks singly and in a batch, shows progress while they run, prints the results, and
stops every process it started before returning.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.client import Client, task_request

EXEC_COMMAND = (
    'python3 -c "import json,sys; t=json.load(sys.stdin); '
    "print(json.dumps({'words': len(t['payload'].get('text','').split()), 'by': 'exec'}))\""
)


def _plain(value: object) -> object:
    """JSON numbers as people write them: 3, not 3.0 (Struct keeps every number a double)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


class _Processes:
    """Every child the demo started, stopped in reverse order however the demo ends."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("ab") as sink:
            child = subprocess.Popen(
                [sys.executable, "-m", "godel_grpc.cli", *args], stdout=sink, stderr=sink, env=env
            )
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(self.children):
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


async def _wait_ready(client: Client, agents: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = [a for a in await client.agents.list() if a.state == a.STATE_READY]
            if len(ready) >= agents:
                return
        except Exception:  # the server may still be starting
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{agents} agents did not connect within {timeout} s")


async def run_demo(keep: bool = False) -> int:
    """Runs the demo; returns the exit code."""
    work = Path(tempfile.mkdtemp(prefix="godel-demo-"))
    port, metrics_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    processes = _Processes()
    log = work / "processes.log"
    started = time.monotonic()
    try:
        _say(f"▶ starting coordinator on {address} (metrics on :{metrics_port}, data in {work})")
        processes.start(
            "serve",
            "--listen",
            address,
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--data-dir",
            str(work / "data"),
            log=log,
        )
        handlers = "godel_grpc.demo.handlers"
        processes.start(
            "agent",
            "--coordinator",
            address,
            "--role",
            "architect",
            "--name",
            "architect-1",
            "--handler",
            f"{handlers}:design",
            log=log,
        )
        processes.start(
            "agent",
            "--coordinator",
            address,
            "--role",
            "reviewer",
            "--name",
            "reviewer-1",
            "--capacity",
            "4",
            "--handler",
            f"{handlers}:review",
            log=log,
        )
        processes.start(
            "agent",
            "--coordinator",
            address,
            "--role",
            "counter",
            "--name",
            "counter-exec",
            "--capacity",
            "2",
            "--exec",
            EXEC_COMMAND,
            log=log,
        )
        async with Client(address) as client:
            await _wait_ready(client, 3)
            _say(
                "▶ 3 agents connected: architect-1 (Python), reviewer-1 (Python), "
                "counter-exec (--exec)"
            )
            design = await client.tasks.submit(role="architect", title="Design system architecture")
            _say(f"▶ submitted {design.id}: {design.title}")
            async for update in client.tasks.watch(design.id, timeout=30):
                state = task_pb2.Task.State.Name(update.state).removeprefix("STATE_")
                note = ""
                if update.HasField("progress"):
                    note = f" {update.progress.fraction:.0%} {update.progress.message}"
                _say(f"    {update.id} {state}{note}")
            batch = await client.tasks.submit_many(
                [
                    task_request(
                        role="counter",
                        title=f"count words #{i}",
                        payload={"text": "the quick brown fox " * (i + 1)},
                    )
                    for i in range(4)
                ]
                + [
                    task_request(
                        role="reviewer", title=f"review change #{i}", payload={"change": i}
                    )
                    for i in range(4)
                ]
            )
            _say(f"▶ submitted a batch of {len(batch)} tasks in one call")
            results = await asyncio.gather(*(client.tasks.wait(t.id, timeout=30) for t in batch))
            failed = 0
            for task in [await client.tasks.get(design.id), *results]:
                state = task_pb2.Task.State.Name(task.state).removeprefix("STATE_")
                output = (
                    json.dumps(_plain(json_format.MessageToDict(task.output)))
                    if task.HasField("output")
                    else task.error.message
                )
                failed += task.state != task_pb2.Task.STATE_SUCCEEDED
                _say(f"    {task.id:<10} {task.title:<28} {state:<10} {output}")
            agents = await client.agents.list()
            _say("▶ agents: " + ", ".join(f"{a.name} ran {a.tasks_completed}" for a in agents))
        elapsed = time.monotonic() - started
        _say(f"▶ done in {elapsed:.1f} s: {len(batch) + 1 - failed} succeeded, {failed} failed")
        return 0 if failed == 0 else 1
    except Exception as exc:
        _say(f"✗ demo failed: {exc}")
        _say(f"  process logs: {log}")
        keep = True
        return 1
    finally:
        processes.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
