"""The runtime interface: what the coordinator needs from wherever spawned agents run.

The coordinator only ever asks a runtime to start an agent (with its sidecars), to stop
one, and what it is running; it never touches processes itself. That keeps the local
runtime (child processes) and a future Kubernetes runtime (pods) interchangeable behind
SpawnAgent and TerminateAgent.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from godel_grpc._proto.godel.v1 import agent_pb2


class SpawnFailed(Exception):
    """The runtime could not start what was asked (a sidecar did not come up, the
    command does not exist); nothing of the spawn is left running."""


class Phase(Enum):
    """Where a spawned agent's processes are in their life."""

    RUNNING = "running"
    """The agent process runs (it may not have connected yet)."""
    RESTARTING = "restarting"
    """It exited on its own and is waiting out its backoff before it starts again."""
    STOPPED = "stopped"
    """Terminated, or exited without a restart: stopped for good."""


@dataclass(frozen=True)
class AgentLaunch:
    """Everything a runtime needs to start one agent and its sidecars.

    `agent_id` and `name` are chosen by the coordinator before the process exists, so
    that the agent's hello (which carries the name) lands on the id SpawnAgent returned.
    """

    agent_id: str
    name: str
    role: str
    capacity: int = 1
    actions: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    exec_command: str = ""
    """Run per task; empty means the runtime's default (or its built-in handler)."""
    circuit_breaker_json: str = ""
    """The seed's `circuitBreaker` object as JSON, passed to `--circuit-breaker`."""
    reflex_json: str = ""
    """The seed's `reflex` object as JSON, passed to `--reflex`."""
    restart: bool = False
    sidecars: Sequence[agent_pb2.SidecarSpec] = ()
    token: str = field(default="", repr=False)
    """The agent's bearer token (GODEL_TOKEN in its environment); empty when the
    coordinator runs without authentication."""


@dataclass(frozen=True)
class ProcessView:
    """One process of a spawned agent as the runtime last saw it."""

    kind: str
    """``agent``, ``logger``, ``monitor`` or a custom sidecar's name."""
    pid: int
    exit_code: int | None
    port: int = 0


class AgentHandle(abc.ABC):
    """A spawned agent as the runtime tracks it."""

    launch: AgentLaunch

    @property
    @abc.abstractmethod
    def phase(self) -> Phase:
        """Running, waiting to restart, or stopped for good."""

    @property
    @abc.abstractmethod
    def agent_pid(self) -> int:
        """Pid of the current agent process (0 when none was started)."""

    @property
    @abc.abstractmethod
    def exit_code(self) -> int | None:
        """Exit code of the last agent process that exited, None while none has."""

    @property
    @abc.abstractmethod
    def restarts(self) -> int:
        """How many times the agent process was started again after exiting."""

    @abc.abstractmethod
    def processes(self) -> list[ProcessView]:
        """The agent's current process and every sidecar process."""

    def pids(self) -> list[int]:
        """Pids of every process the handle currently owns."""
        return [view.pid for view in self.processes()]


class Runtime(abc.ABC):
    """Starts and stops agents with their sidecars."""

    @abc.abstractmethod
    async def spawn(self, launch: AgentLaunch) -> AgentHandle:
        """Starts the agent and its sidecars and returns once the agent process exists.

        Raises:
            SpawnFailed: when something could not start; what did start is stopped.
        """

    @abc.abstractmethod
    async def terminate(self, agent_id: str, grace: float) -> AgentHandle:
        """Stops the agent (SIGTERM, SIGKILL after `grace` seconds), then its sidecars.

        Raises:
            KeyError: for an agent this runtime did not spawn.
        """

    @abc.abstractmethod
    def get(self, agent_id: str) -> AgentHandle | None:
        """The handle of a spawned agent, or None."""

    @abc.abstractmethod
    def list(self) -> list[AgentHandle]:
        """Every agent this runtime spawned, in spawn order."""

    @abc.abstractmethod
    async def close(self, grace: float) -> None:
        """Stops every process it started; after this nothing it spawned runs."""
