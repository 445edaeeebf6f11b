"""SpawnAgent and TerminateAgent over a runtime, and how spawned agents are shown.

Identity: SpawnAgent picks the agent's id and a unique name before the process exists
and tells the coordinator (`Coordinator.spawned_ids`, name → id); when the hello with
that name arrives, the coordinator registers the agent under that id. So the id in
SpawnAgent's response is the agent's id for good, also across restarts of its process
(a restarted process says hello with the same name and lands on the same id).

Until the hello arrives the coordinator has no record, and GetAgent / ListAgents show a
placeholder in state STARTING with the pid. Once registered, the coordinator's record
is shown, with what only the runtime knows laid over it: pid, exit code, the spawn
options, STARTING while a crashed agent waits to restart, TERMINATED once stopped for
good. The TERMINATED state lives in this process (not in the event log) for now.
"""

from __future__ import annotations

import secrets
import time

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import agent_pb2, agent_service_pb2
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.auth.scopes import spawn_scopes
from godel_grpc.core.breakers import breaker_settings
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from godel_grpc.runtime.base import AgentHandle, AgentLaunch, Phase, Runtime, SpawnFailed
from godel_grpc.runtime.local import check_sidecars

Agent = agent_pb2.Agent

DEFAULT_TERMINATE_GRACE = 30.0
"""TerminateAgent's grace when the request gives none (as its proto says)."""
MAX_SPAWNED = 256
"""Agents the runtime runs at once; beyond that SpawnAgent is RESOURCE_EXHAUSTED."""


class SpawnedAgents:
    """The coordinator's side of spawning: requests in, runtime handles, agents out."""

    def __init__(
        self,
        coordinator: Coordinator,
        runtime: Runtime,
        credentials: AgentCredentials | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.runtime = runtime
        self.credentials = credentials
        """Mints each spawned agent's token; None when authentication is off."""
        self._options: dict[str, agent_pb2.AgentOptions] = {}
        self._created: dict[str, float] = {}

    async def spawn(self, request: agent_service_pb2.SpawnAgentRequest) -> Agent:
        """Starts the agent; returns it in state STARTING with its pid."""
        self.coordinator.require_open()
        problems = check_sidecars(request.sidecars)
        models = (request.models.write, request.models.read) if request.HasField("models") else None
        scopes, conflict = spawn_scopes(request.purpose, models)
        if conflict:
            problems.append(FieldViolation("models", conflict))
        if problems:
            raise InvalidArgument(problems)
        if request.HasField("circuit_breaker"):
            breaker_settings(request.circuit_breaker)  # refuse now, not in the agent's hello
        running = [h for h in self.runtime.list() if h.phase is not Phase.STOPPED]
        if len(running) >= MAX_SPAWNED:
            raise ResourceExhausted(
                f"the runtime already runs {MAX_SPAWNED} agents", subject="agents"
            )
        name = request.name or f"{request.role}-{secrets.token_hex(4)}"
        taken = {h.launch.name for h in running} | {
            s.name for s in self.coordinator.sessions.values()
        }
        if name in taken:
            raise AlreadyExists(f"an agent named {name!r} is running", reason="AGENT_NAME_TAKEN")
        agent_id = f"ag-{self.coordinator.state.epoch}-s{secrets.token_hex(4)}"
        token = (
            await self.credentials.mint(agent_id, name, scopes)
            if self.credentials is not None
            else ""
        )
        launch = AgentLaunch(
            agent_id=agent_id,
            name=name,
            role=request.role,
            capacity=request.capacity or 1,
            actions=tuple(request.actions),
            labels=dict(request.labels),
            exec_command=request.exec,
            circuit_breaker_json=(
                json_format.MessageToJson(request.circuit_breaker, indent=None)
                if request.HasField("circuit_breaker")
                else ""
            ),
            reflex_json=(
                json_format.MessageToJson(request.reflex, indent=None)
                if request.HasField("reflex")
                else ""
            ),
            restart=request.restart,
            sidecars=tuple(request.sidecars),
            token=token,
        )
        self._options[agent_id] = _options(request)
        self._created[agent_id] = time.time()
        history = self.coordinator.agent_history
        if request.event_sourcing.enabled:  # before the process exists, so before its events
            await history.enable(agent_id, request.event_sourcing.snapshot_interval)
        self.coordinator.spawned_ids[name] = agent_id
        try:
            handle = await self.runtime.spawn(launch)
        except SpawnFailed as exc:
            del self.coordinator.spawned_ids[name]
            history.disable(agent_id)
            if self.credentials is not None:
                await self.credentials.revoke(agent_id)
            raise FailedPrecondition(str(exc), subject="sidecars", reason="SPAWN_FAILED") from exc
        return self.show(handle)

    async def terminate(self, request: agent_service_pb2.TerminateAgentRequest) -> Agent:
        """Stops a spawned agent and its sidecars and returns it TERMINATED."""
        handle = self.runtime.get(request.id)
        if handle is None:
            if request.id in self.coordinator.state.agents:
                raise FailedPrecondition(
                    f"agent {request.id!r} was not spawned by this coordinator; stop its "
                    "process where it runs",
                    subject=f"agents/{request.id}",
                    reason="NOT_SPAWNED",
                )
            raise NotFound("agent", request.id)
        if handle.phase is Phase.STOPPED:
            raise FailedPrecondition(
                f"agent {request.id!r} is already terminated", subject=f"agents/{request.id}"
            )
        grace = (
            request.grace_period.ToNanoseconds() / 1e9
            if request.HasField("grace_period")
            else DEFAULT_TERMINATE_GRACE
        )
        handle = await self.runtime.terminate(request.id, grace)
        if self.credentials is not None:
            await self.credentials.revoke(request.id)
        self.coordinator.spawned_ids.pop(handle.launch.name, None)
        return self.show(handle)

    def get(self, agent_id: str) -> Agent:
        """GetAgent: a spawned agent (placeholder or overlaid record) or the coordinator's."""
        handle = self.runtime.get(agent_id)
        if handle is not None:
            return self.show(handle)
        return self.coordinator.directory.get_agent(agent_id)

    def list(
        self, page_size: int, page_token: str, state: int, role: str
    ) -> tuple[list[Agent], str]:
        """ListAgents with spawned agents overlaid; spawned agents that have not said
        hello yet come on the last page. The state filter applies to what is shown."""
        agents, token = self.coordinator.directory.list_agents(page_size, page_token, 0, role)
        shown = [self.overlay(agent) for agent in agents]
        if not token:
            registered = self.coordinator.state.agents
            shown += [
                self.show(h)
                for h in self.runtime.list()
                if h.launch.agent_id not in registered and (not role or h.launch.role == role)
            ]
        return [a for a in shown if not state or a.state == state], token

    def overlay(self, agent: Agent) -> Agent:
        """The agent with the runtime's view of it, when it was spawned."""
        handle = self.runtime.get(agent.id)
        return self.show(handle, agent) if handle is not None else agent

    def show(self, handle: AgentHandle, registered: Agent | None = None) -> Agent:
        """A spawned agent as the API shows it; `registered` is the coordinator's view
        of it to lay the runtime's over (default: as of now)."""
        launch = handle.launch
        record = self.coordinator.state.agents.get(launch.agent_id)
        if registered is not None:
            agent = Agent()
            agent.CopyFrom(registered)
        elif record is None:
            agent = Agent(
                id=launch.agent_id,
                name=launch.name,
                role=launch.role,
                actions=launch.actions,
                capacity=launch.capacity,
                labels=launch.labels,
                state=Agent.STATE_STARTING,
            )
            agent.create_time.FromNanoseconds(int(self._created.get(launch.agent_id, 0) * 1e9))
        else:
            agent = record.to_proto()
        if handle.phase is Phase.STOPPED:
            agent.state = Agent.STATE_TERMINATED
        elif handle.phase is Phase.RESTARTING or (
            record is not None and agent.state == Agent.STATE_DISCONNECTED
        ):
            agent.state = Agent.STATE_STARTING
        agent.pid = handle.agent_pid
        if handle.exit_code is not None:
            agent.exit_code = handle.exit_code
        options = self._options.get(launch.agent_id)
        if options is not None:
            agent.options.CopyFrom(options)
        return agent


def _options(request: agent_service_pb2.SpawnAgentRequest) -> agent_pb2.AgentOptions:
    """The spawn's pattern options, kept as given (those not acted on yet included)."""
    options = agent_pb2.AgentOptions(purpose=request.purpose, sidecars=request.sidecars)
    for name in ("reflex", "circuit_breaker", "event_sourcing", "models"):
        if request.HasField(name):
            getattr(options, name).CopyFrom(getattr(request, name))
    return options
