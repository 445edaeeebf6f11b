"""`godel demo`: a coordinator, real agent processes and tasks, end to end.

Starts `godel serve` on free loopback ports with a scratch data directory, starts agent
processes (Python handlers and one `--exec` agent wrapping a shell command), submits
tasks singly and in a batch, shows progress while they run, prints the results, then
runs the seed's examples as chapters (convoy, saga, circuit breaker, backpressure,
bulkhead: `examples/`), and stops every process it started before returning (the
agent the breaker chapter spawns is stopped by the coordinator's runtime).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


HANDLERS = "godel_grpc.demo.handlers"
_ACTIONS = tuple(
    f"--action={name}"
    for name in (
        "createUser",
        "deleteUser",
        "sendEmail",
        "markEmailFailed",
        "createTrial",
        "cancelTrial",
    )
)
_FLEET = [
    ("architect-1", "architect", ("--handler", f"{HANDLERS}:work")),
    ("backend-1", "backend", ("--handler", f"{HANDLERS}:work")),
    ("frontend-1", "frontend", ("--handler", f"{HANDLERS}:work")),
    ("tester-1", "tester", ("--handler", f"{HANDLERS}:work")),
    ("reviewer-1", "reviewer", ("--handler", f"{HANDLERS}:review")),
    ("designer-1", "designer", ("--handler", f"{HANDLERS}:design")),
    ("counter-exec", "counter", ("--exec", EXEC_COMMAND)),
    ("onboarding-1", "onboarding", ("--handler", f"{HANDLERS}:onboarding", *_ACTIONS)),
]
"""(name, role, how it runs tasks) of every agent the demo starts."""


def _state_name(task: task_pb2.Task) -> str:
    return task_pb2.Task.State.Name(task.state).removeprefix("STATE_")


async def _tasks_chapter(client: Client) -> int:
    """Single tasks with progress, then a batch across a Python and an --exec agent."""
    _say("\n── tasks ──")
    design = await client.tasks.submit(role="designer", title="Design system architecture")
    _say(f"▶ submitted {design.id}: {design.title}")
    async for update in client.tasks.watch(design.id, timeout=30):
        note = ""
        if update.HasField("progress"):
            note = f" {update.progress.fraction:.0%} {update.progress.message}"
        _say(f"    {update.id} {_state_name(update)}{note}")
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
            task_request(role="reviewer", title=f"review change #{i}", payload={"change": i})
            for i in range(4)
        ]
    )
    _say(f"▶ submitted a batch of {len(batch)} tasks in one call")
    results = await asyncio.gather(*(client.tasks.wait(t.id, timeout=30) for t in batch))
    failed = 0
    for task in [await client.tasks.get(design.id), *results]:
        output = (
            json.dumps(_plain(json_format.MessageToDict(task.output)))
            if task.HasField("output")
            else task.error.message
        )
        failed += task.state != task_pb2.Task.STATE_SUCCEEDED
        _say(f"    {task.id:<10} {task.title:<28} {_state_name(task):<10} {output}")
    return failed


def _example(name: str) -> Any:
    """A module of examples/, which the demo runs as chapters (from the repository)."""
    try:
        return importlib.import_module(f"examples.{name}")
    except ImportError as missing:
        raise RuntimeError(
            "examples/ is not importable here; run the demo from the repository"
        ) from missing


def _indent(line: str) -> None:
    _say("  " + line)


async def _convoy_chapter(client: Client) -> int:
    """The seed's convoy (section 1), from examples/convoy.py."""
    _say("\n── convoy (seed section 1) ──")
    example = _example("convoy")
    done = await example.run(client, _indent)
    return 0 if done.state == done.STATE_SUCCEEDED else 1


async def _saga_chapter(client: Client) -> int:
    """The seed's onboarding saga (section 5), from examples/saga.py: once through, then
    with its last step failing, which compensates the first two in reverse."""
    _say("\n── saga (seed section 5) ──")
    example = _example("saga")
    done = await example.run(client, say=_indent)
    failed = int(done.state != done.STATE_SUCCEEDED)
    _say("  … and again with createTrial failing:")
    undone = await example.run(client, fail_at="createTrial", say=_indent)
    return failed + int(undone.state != undone.STATE_COMPENSATED)


async def _reflex_chapter(client: Client) -> int:
    """The seed's reflex agent (section 2), from examples/reflex.py."""
    _say("\n── reflex (seed section 2) ──")
    return 0 if await _example("reflex").run(client, say=_indent) else 1


async def _swarm_chapter(client: Client) -> int:
    """The seed's elastic swarm (section 3), from examples/swarm.py."""
    _say("\n── swarm (seed section 3) ──")
    return 0 if await _example("swarm").run(client, say=_indent) else 1


async def _event_sourcing_chapter(client: Client) -> int:
    """The seed's event-sourced agent (section 6), from examples/event_sourcing.py."""
    _say("\n── event sourcing (seed section 6) ──")
    return 0 if await _example("event_sourcing").run(client, say=_indent) else 1


async def _cqrs_chapter(processes: _Processes, work: Path, log: Path) -> int:
    """The seed's CQRS agents (section 7), from examples/cqrs.py, on a second
    coordinator that requires tokens: each spawned agent gets credentials with only the
    scopes its `purpose` and `models` give it."""
    _say("\n── CQRS (seed section 7) ──")
    secure = work / "secure"
    minted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "godel_grpc.cli", "token", "create", "--scopes", "admin",
         "--name", "demo-operator", "--data-dir", str(secure)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = minted.stdout.strip()
    address = f"127.0.0.1:{_free_port()}"
    processes.start(
        "serve", "--listen", address, "--metrics-listen", "", "--data-dir", str(secure),
        "--auth", "required", log=log,
    )  # fmt: skip
    _say(f"  started a coordinator on {address} that requires tokens; minted an admin token")
    async with Client(address, token=token) as client:
        await _wait_ready(client, 0)
        return 0 if await _example("cqrs").run(client, say=_indent) else 1


async def _sidecar_chapter(client: Client, data_dir: Path) -> int:
    """The seed's agent with logger and monitor sidecars (section 10)."""
    _say("\n── sidecars (seed section 10) ──")
    return 0 if await _example("sidecars").run(client, data_dir, say=_indent) else 1


async def _workflow_chapter(client: Client) -> int:
    """The seed's combined workflow, then the same with its verify stage failing."""
    _say("\n── combined workflow (seed: Combining Patterns) ──")
    example = _example("workflow")
    done = await example.run(client, example.ENTERPRISE_FEATURE, say=_indent)
    failed = int(done.state != done.STATE_SUCCEEDED)
    _say("  … and again with every verify agent failing:")
    undone = await example.run(client, example.failing_verify(), say=_indent)
    return failed + int(undone.state != undone.STATE_FAILED or not undone.compensation_state)


async def _breaker_chapter(client: Client) -> int:
    """The seed's circuit breaker (section 4), from examples/breakers.py: an agent
    spawned with the seed's settings opens after five failures; an operator resets it,
    forces it open and resets it again."""
    _say("\n── circuit breaker (seed section 4) ──")
    example = _example("breakers")
    circuit = await example.run(client, _indent)
    return 0 if circuit.state == circuit.STATE_CLOSED and circuit.failure_count == 5 else 1


async def _queue_chapter(client: Client) -> int:
    """The seed's backpressure queue (section 8), from examples/queues.py: 11,000 tasks
    streamed into the 10,000-task shed-load queue; every one accounted for."""
    _say("\n── backpressure (seed section 8) ──")
    example = _example("queues")
    queue = await example.run(client, _indent)
    counts = queue.counts
    return 0 if queue.depth + counts.shed + counts.rejected == len(example.priorities()) else 1


async def _bulkhead_chapter(client: Client, processes: _Processes, log: Path) -> int:
    """The seed's bulkhead (section 9), from examples/bulkheads.py: analytics flooded
    and failing while auth's tasks all complete."""
    _say("\n── bulkhead (seed section 9) ──")
    example = _example("bulkheads")

    def start_agents(argument_lists: Sequence[Sequence[str]]) -> None:
        for arguments in argument_lists:
            processes.start("agent", *arguments, log=log)

    shown = await example.run(client, start_agents, _indent)
    auth = next(p for p in shown.partitions if p.name == "auth")
    analytics = next(p for p in shown.partitions if p.name == "analytics")
    return 0 if auth.completed == 20 and auth.failed == 0 and analytics.rejected > 0 else 1


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
        for name, role, how in _FLEET:
            processes.start(
                "agent", "--coordinator", address, "--role", role, "--name", name,
                "--capacity", "4", *how, log=log,
            )  # fmt: skip
        async with Client(address) as client:
            await _wait_ready(client, len(_FLEET))
            _say(f"▶ {len(_FLEET)} agents connected: " + ", ".join(n for n, _, _ in _FLEET))
            failed = await _tasks_chapter(client)
            failed += await _convoy_chapter(client)
            failed += await _reflex_chapter(client)
            failed += await _swarm_chapter(client)
            failed += await _breaker_chapter(client)
            failed += await _saga_chapter(client)
            failed += await _event_sourcing_chapter(client)
            failed += await _cqrs_chapter(processes, work, log)
            failed += await _queue_chapter(client)
            failed += await _bulkhead_chapter(client, processes, log)
            failed += await _sidecar_chapter(client, work / "data")
            failed += await _workflow_chapter(client)
            agents = await client.agents.list()
            busiest = sorted(agents, key=lambda a: -a.tasks_completed)[:5]
            _say(
                f"▶ {len(agents)} agents took part and completed "
                f"{sum(a.tasks_completed for a in agents)} tasks; busiest: "
                + ", ".join(f"{a.name} ({a.tasks_completed})" for a in busiest)
            )
        elapsed = time.monotonic() - started
        _say(
            f"▶ done in {elapsed:.1f} s: "
            + ("everything succeeded" if not failed else f"{failed} failures")
        )
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
