"""The local runtime: each spawned agent and each of its sidecars is a child process.

Start order follows the wiring: the logger first (the agent needs its port for
``--logger``), then the agent, then the monitor (it needs the agent's pid), then custom
sidecars. Each child runs in its own process group so that stopping one also stops
whatever it started (an ``--exec`` agent's task commands), and so that a signal sent to
the coordinator's terminal group does not hit the children before the coordinator has
decided how to stop them.

A waiter per agent notices an agent process that exits on its own: its exit code is
kept, and, when the spawn asked for it, the agent is started again with exponential
backoff (its monitor too, since a monitor ends with the process it watches). Sidecars
that die are not restarted: the agent does not depend on them (it buffers logs while
its logger is away).

Children's own stderr goes to ``<base_dir>/<agent name>/<kind>.stderr.log`` and the
logger sidecar writes ``<base_dir>/<agent name>/logger/agent.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from google.protobuf import json_format

import godel_grpc
from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.errors import FieldViolation
from godel_grpc.runtime.base import (
    AgentHandle,
    AgentLaunch,
    Phase,
    ProcessView,
    Runtime,
    SpawnFailed,
)

log = logging.getLogger(__name__)

BUILTIN_HANDLER = "godel_grpc.runtime.default_handler:echo"
"""What a spawned agent runs when neither the spawn nor the coordinator names a command."""

LOG_LEVELS = ("debug", "info", "warning", "error")
MONITOR_METRICS = ("cpu", "memory", "threads", "fds", "io")
_IMAGES = {"godel/sidecar-logger": "logger", "godel/sidecar-monitor": "monitor"}

LISTEN_TIMEOUT = 20.0
"""Seconds a built-in sidecar gets to print its ``listening`` line."""
SIDECAR_GRACE = 3.0
"""Seconds a sidecar gets to exit after SIGTERM before SIGKILL."""
STABLE_RUN = 30.0
"""An agent that ran this long before exiting starts its restart backoff afresh."""


def sidecar_kind(spec: agent_pb2.SidecarSpec) -> str | None:
    """``logger`` or ``monitor`` for the built-in sidecars (by name, or by the seed's
    image name), ``custom`` for one with a command, None for one this runtime cannot
    start."""
    image = spec.image.split(":", 1)[0]
    if spec.name in ("logger", "monitor") and not spec.command:
        return spec.name
    if image in _IMAGES and not spec.command:
        return _IMAGES[image]
    if spec.command:
        return "custom"
    return None


def check_sidecars(specs: Sequence[agent_pb2.SidecarSpec]) -> list[FieldViolation]:
    """What is wrong with the requested sidecars for this runtime, field by field.

    Checked before anything starts, so a bad spawn is refused without side effects.
    """
    problems: list[FieldViolation] = []
    names: set[str] = set()
    for index, spec in enumerate(specs):
        where = f"sidecars[{index}]"
        kind = sidecar_kind(spec)
        if spec.name in names:
            problems.append(FieldViolation(f"{where}.name", f"{spec.name!r} is given twice"))
        names.add(spec.name)
        config = json_format.MessageToDict(spec.config)
        if kind is None:
            problems.append(
                FieldViolation(
                    f"{where}.name",
                    f"unknown sidecar {spec.name!r}: the local runtime knows logger and "
                    "monitor; give `command` to run another one",
                )
            )
        elif kind == "logger":
            level = str(config.get("level", "info")).lower()
            if level not in LOG_LEVELS:
                problems.append(
                    FieldViolation(f"{where}.config.level", f"must be one of {LOG_LEVELS}")
                )
        elif kind == "monitor":
            metrics = config.get("metrics", list(MONITOR_METRICS))
            if (
                not isinstance(metrics, list)
                or not metrics
                or set(map(str, metrics)) - set(MONITOR_METRICS)
            ):
                problems.append(
                    FieldViolation(
                        f"{where}.config.metrics", f"must be a non-empty list of {MONITOR_METRICS}"
                    )
                )
            interval = config.get("interval", 1.0)
            if not isinstance(interval, int | float) or not 0.1 <= interval <= 3600:
                problems.append(
                    FieldViolation(f"{where}.config.interval", "must be 0.1 to 3600 seconds")
                )
    return problems


@dataclass
class _Child:
    """One child process and what it announced."""

    kind: str
    proc: asyncio.subprocess.Process
    port: int = 0

    def view(self) -> ProcessView:
        return ProcessView(self.kind, self.proc.pid, self.proc.returncode, self.port)


class LocalAgent(AgentHandle):
    """A spawned agent's child processes and its restart bookkeeping."""

    def __init__(self, launch: AgentLaunch, directory: Path) -> None:
        self.launch = launch
        self.directory = directory
        self.agent: _Child | None = None
        self.sidecars: dict[str, _Child] = {}
        self.logger_port = 0
        self.started_at = 0.0
        self.terminating = False
        self.waiter: asyncio.Task[None] | None = None
        self._phase = Phase.RUNNING
        self._exit_code: int | None = None
        self._restarts = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def agent_pid(self) -> int:
        return self.agent.proc.pid if self.agent is not None else 0

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def restarts(self) -> int:
        return self._restarts

    def processes(self) -> list[ProcessView]:
        children = ([self.agent] if self.agent is not None else []) + list(self.sidecars.values())
        return [child.view() for child in children]


class LocalRuntime(Runtime):
    """Runs spawned agents and their sidecars as local child processes.

    `coordinator_address` is set by the server once its port is bound; agents connect
    there. `default_exec` is `godel serve --agent-exec`.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        default_exec: str = "",
        coordinator_address: str = "",
        python: str = sys.executable,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.base_dir = base_dir
        self.default_exec = default_exec
        self.coordinator_address = coordinator_address
        self.agent_env: dict[str, str] = {}
        """Extra environment of every agent process: how to reach a coordinator that
        speaks TLS (GODEL_TLS_CA, GODEL_TLS_CERT, GODEL_TLS_KEY); set by the server."""
        self.python = python
        self.backoff = backoff
        self._agents: dict[str, LocalAgent] = {}
        self._closing = False

    # -- Runtime -----------------------------------------------------------------------

    def get(self, agent_id: str) -> LocalAgent | None:
        return self._agents.get(agent_id)

    def list(self) -> list[AgentHandle]:
        return list(self._agents.values())

    async def spawn(self, launch: AgentLaunch) -> LocalAgent:
        if self._closing:
            raise SpawnFailed("the runtime is shutting down")
        handle = LocalAgent(launch, self.base_dir / launch.name)
        handle.directory.mkdir(parents=True, exist_ok=True)
        try:
            for spec in launch.sidecars:
                if sidecar_kind(spec) == "logger":
                    child = await self._start_logger(handle, spec)
                    handle.sidecars[spec.name] = child
                    handle.logger_port = child.port
            await self._start_agent(handle)
            await self._start_followers(handle)
        except BaseException:
            await self._stop_all(handle, grace=0.0)
            raise
        self._agents[launch.agent_id] = handle
        handle.waiter = asyncio.get_running_loop().create_task(
            self._watch(handle), name=f"runtime-watch-{launch.name}"
        )
        log.info(
            "agent spawned",
            extra={
                "agent_id": launch.agent_id,
                "agent": launch.name,
                "pids": {view.kind: view.pid for view in handle.processes()},
            },
        )
        return handle

    async def terminate(self, agent_id: str, grace: float) -> LocalAgent:
        handle = self._agents[agent_id]
        handle.terminating = True
        waiter = handle.waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        await self._stop_all(handle, grace)
        if handle.agent is not None and handle.agent.proc.returncode is not None:
            handle._exit_code = handle.agent.proc.returncode
        handle._phase = Phase.STOPPED
        log.info(
            "agent terminated",
            extra={
                "agent_id": agent_id,
                "agent": handle.launch.name,
                "exit_code": handle.exit_code,
            },
        )
        return handle

    async def close(self, grace: float) -> None:
        self._closing = True
        await asyncio.gather(
            *(
                self.terminate(agent_id, grace)
                for agent_id, handle in self._agents.items()
                if not handle.terminating
            )
        )

    # -- starting ----------------------------------------------------------------------

    async def _start_logger(self, handle: LocalAgent, spec: agent_pb2.SidecarSpec) -> _Child:
        config = json_format.MessageToDict(spec.config)
        argv = [
            *("-m", "sidecars.logger", "--listen", "127.0.0.1:0"),
            *("--dir", str(handle.directory / "logger")),
            *("--level", str(config.get("level", "info")).lower()),
            *("--agent-id", handle.launch.agent_id),
        ]
        child = await self._start(handle, "logger", [self.python, *argv], announce=True)
        child.port = await self._listening(handle, child)
        return child

    async def _start_agent(self, handle: LocalAgent) -> None:
        launch = handle.launch
        argv = [
            self.python,
            *("-m", "godel_grpc.cli", "agent", "--coordinator", self.coordinator_address),
            *("--role", launch.role, "--name", launch.name),
            *("--capacity", str(launch.capacity or 1)),
        ]
        command = launch.exec_command or self.default_exec
        argv += ["--exec", command] if command else ["--handler", BUILTIN_HANDLER]
        for action in launch.actions:
            argv += ["--action", action]
        for key, value in launch.labels.items():
            argv += ["--label", f"{key}={value}"]
        if launch.circuit_breaker_json:
            argv += ["--circuit-breaker", launch.circuit_breaker_json]
        if launch.reflex_json:
            argv += ["--reflex", launch.reflex_json]
        if handle.logger_port:
            # The agent emits what its logger keeps; the logger filters again on its side.
            argv += ["--logger", f"127.0.0.1:{handle.logger_port}"]
            argv += ["--log-level", self._logger_level(launch)]
        # The token goes by environment, not argv, so `ps` does not show it; the agent's
        # task commands inherit it with the coordinator's address, to call back as it.
        env = {**self.agent_env, "GODEL_COORDINATOR": self.coordinator_address}
        if launch.token:
            env["GODEL_TOKEN"] = launch.token
        handle.agent = await self._start(handle, "agent", argv, env=env)
        handle.started_at = time.monotonic()

    async def _start_followers(self, handle: LocalAgent) -> None:
        """Starts the sidecars that need the agent's pid: monitors and custom ones."""
        for spec in handle.launch.sidecars:
            kind = sidecar_kind(spec)
            if kind == "monitor":
                handle.sidecars[spec.name] = await self._start_monitor(handle, spec)
            elif kind == "custom" and spec.name not in handle.sidecars:
                handle.sidecars[spec.name] = await self._start(
                    handle,
                    spec.name,
                    list(spec.command),
                    env={
                        "GODEL_AGENT_ID": handle.launch.agent_id,
                        "GODEL_AGENT_NAME": handle.launch.name,
                        "GODEL_AGENT_PID": str(handle.agent_pid),
                        "GODEL_SIDECAR_CONFIG": json_format.MessageToJson(spec.config, indent=None),
                    },
                )

    async def _start_monitor(self, handle: LocalAgent, spec: agent_pb2.SidecarSpec) -> _Child:
        config = json_format.MessageToDict(spec.config)
        metrics = config.get("metrics", list(MONITOR_METRICS))
        argv = [
            *("-m", "sidecars.monitor", "--listen", "127.0.0.1:0"),
            *("--pid", str(handle.agent_pid)),
            *("--metrics", ",".join(map(str, metrics))),
            *("--interval", str(config.get("interval", 1.0))),
            *("--agent-id", handle.launch.agent_id),
            *("--coordinator", self.coordinator_address),
        ]
        # It reports samples with the agent's own credentials (by environment, as the
        # agent gets them): they are bound to this agent and good for nothing else.
        env = dict(self.agent_env)
        if handle.launch.token:
            env["GODEL_TOKEN"] = handle.launch.token
        child = await self._start(handle, "monitor", [self.python, *argv], announce=True, env=env)
        # Its port is read in the background: nothing waits on the monitor to start.
        task = asyncio.get_running_loop().create_task(self._read_port(handle, child))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return child

    async def _read_port(self, handle: LocalAgent, child: _Child) -> None:
        with contextlib.suppress(SpawnFailed):
            child.port = await self._listening(handle, child)

    async def _start(
        self,
        handle: LocalAgent,
        kind: str,
        argv: Sequence[str],
        *,
        announce: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> _Child:
        with _append(handle.directory / f"{kind}.stderr.log") as stderr:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *DIE_WITH_PARENT,
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE if announce else asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                    env=_child_env(env or {}),
                    start_new_session=True,  # its own process group: stopped as a whole
                )
            except OSError as exc:
                raise SpawnFailed(
                    f"cannot start the {kind} of {handle.launch.name}: {exc}"
                ) from exc
        return _Child(kind, proc)

    async def _listening(self, handle: LocalAgent, child: _Child) -> int:
        """The port from a built-in sidecar's ``{"event": "listening"}`` line."""
        assert child.proc.stdout is not None
        try:
            line = await asyncio.wait_for(child.proc.stdout.readline(), LISTEN_TIMEOUT)
            return int(json.loads(line)["port"])
        except (TimeoutError, ValueError, KeyError) as exc:
            where = handle.directory / f"{child.kind}.stderr.log"
            raise SpawnFailed(
                f"the {child.kind} sidecar of {handle.launch.name} did not start (see {where})"
            ) from exc

    def _logger_level(self, launch: AgentLaunch) -> str:
        for spec in launch.sidecars:
            if sidecar_kind(spec) == "logger":
                return str(json_format.MessageToDict(spec.config).get("level", "info")).lower()
        return "info"

    # -- watching and stopping ---------------------------------------------------------

    async def _watch(self, handle: LocalAgent) -> None:
        """Waits for the agent process to exit; restarts it when asked to."""
        failures = 0
        while True:
            assert handle.agent is not None
            code = await handle.agent.proc.wait()
            handle._exit_code = code
            if handle.terminating or self._closing:
                return
            ran = time.monotonic() - handle.started_at
            failures = 1 if ran >= STABLE_RUN else failures + 1
            log.warning(
                "spawned agent exited",
                extra={
                    "agent_id": handle.launch.agent_id,
                    "agent": handle.launch.name,
                    "exit_code": code,
                    "restart": handle.launch.restart,
                },
            )
            if not handle.launch.restart:
                handle._phase = Phase.STOPPED
                await self._stop_all(handle, SIDECAR_GRACE)
                return
            handle._phase = Phase.RESTARTING
            base, cap = self.backoff
            await asyncio.sleep(min(cap, base * 2 ** (failures - 1)))  # the backoff itself
            for spec in handle.launch.sidecars:  # monitors end with the process they watch
                if sidecar_kind(spec) in ("monitor", "custom"):
                    old = handle.sidecars.pop(spec.name, None)
                    if old is not None:
                        await _stop_child(old, SIDECAR_GRACE)
            try:
                await self._start_agent(handle)
                await self._start_followers(handle)
            except SpawnFailed:
                log.exception("restart failed", extra={"agent": handle.launch.name})
                handle._phase = Phase.STOPPED
                await self._stop_all(handle, SIDECAR_GRACE)
                return
            handle._restarts += 1
            handle._phase = Phase.RUNNING
            log.info(
                "spawned agent restarted",
                extra={
                    "agent": handle.launch.name,
                    "pid": handle.agent_pid,
                    "restarts": handle.restarts,
                },
            )

    async def _stop_all(self, handle: LocalAgent, grace: float) -> None:
        """The agent first (its logger still takes its last lines), then its sidecars,
        the logger last."""
        if handle.agent is not None:
            await _stop_child(handle.agent, grace)
        loggers = [c for c in handle.sidecars.values() if c.kind == "logger"]
        others = [c for c in handle.sidecars.values() if c.kind != "logger"]
        await asyncio.gather(*(_stop_child(child, SIDECAR_GRACE) for child in others))
        await asyncio.gather(*(_stop_child(child, SIDECAR_GRACE) for child in loggers))


async def _stop_child(child: _Child, grace: float) -> None:
    """SIGTERM to the child's process group, SIGKILL after `grace` seconds; then
    SIGKILL to whatever of the group outlived its leader."""
    pid = child.proc.pid
    if child.proc.returncode is None:
        _signal_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(child.proc.wait(), grace)
        except TimeoutError:
            _signal_group(pid, signal.SIGKILL)
            await child.proc.wait()
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _append(path: Path) -> BinaryIO:
    """A child's stderr file, opened for appending (a restart adds to the same file).
    Opening a local file is quick enough not to matter to the event loop."""
    return path.open("ab")


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The coordinator's environment without its GODEL_* settings (an inherited
    GODEL_EXEC would contradict the agent's flags), with this package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GODEL_")}
    root = str(Path(godel_grpc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _die_with_parent_prefix() -> tuple[str, ...]:
    """A command prefix that makes the kernel send the child SIGTERM when the coordinator
    dies, so that a coordinator killed with SIGKILL (which cannot stop its children)
    leaves no agent or sidecar behind. util-linux's `setpriv` sets that and then execs
    the command (same pid); setting it from Python between fork and exec is not safe in
    a process with threads. Without `setpriv`, only the coordinator's own shutdown
    stops its children."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    return (setpriv, "--pdeathsig", "TERM", "--")


DIE_WITH_PARENT = _die_with_parent_prefix()
