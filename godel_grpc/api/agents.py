"""AgentService: spawning and terminating (through the runtime), reflex feedback, the
agent queries, WatchAgents (a subscription query), ReplayAgent and monitor samples."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc._proto.godel.v1 import agent_service_pb2 as pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as pb_grpc
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.core.breaker_commands import BreakerCommands
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.core.records import AgentRecord
from godel_grpc.core.reflex_commands import submit_feedback
from godel_grpc.errors import FailedPrecondition, Unavailable
from godel_grpc.runtime.base import Runtime
from godel_grpc.runtime.spawned import SpawnedAgents

Context = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Serves AgentService from the coordinator."""

    def __init__(
        self,
        coordinator: Coordinator,
        runtime: Runtime | None = None,
        spawned: SpawnedAgents | None = None,
        credentials: AgentCredentials | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._breakers = BreakerCommands(coordinator)
        if spawned is None and runtime is not None:
            spawned = SpawnedAgents(coordinator, runtime, credentials)
        self._spawned = spawned

    def _runtime(self) -> SpawnedAgents:
        if self._spawned is None:
            raise FailedPrecondition("this coordinator has no runtime to spawn agents with")
        return self._spawned

    async def SpawnAgent(
        self, request: pb.SpawnAgentRequest, context: Context
    ) -> pb.SpawnAgentResponse:
        return pb.SpawnAgentResponse(agent=await self._runtime().spawn(request))

    async def TerminateAgent(
        self, request: pb.TerminateAgentRequest, context: Context
    ) -> pb.TerminateAgentResponse:
        return pb.TerminateAgentResponse(agent=await self._runtime().terminate(request))

    async def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: Context
    ) -> pb.SubmitFeedbackResponse:
        return await submit_feedback(self._coordinator, request)

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        if self._spawned is not None:
            return pb.GetAgentResponse(agent=self._spawned.get(request.id))
        return pb.GetAgentResponse(agent=self._coordinator.directory.get_agent(request.id))

    async def ReportAgentSample(
        self, request: pb.ReportAgentSampleRequest, context: Context
    ) -> pb.ReportAgentSampleResponse:
        self._coordinator.directory.report_sample(request.agent_id, request.sample)
        return pb.ReportAgentSampleResponse()

    async def GetCircuitState(
        self, request: pb.GetCircuitStateRequest, context: Context
    ) -> pb.GetCircuitStateResponse:
        return self._breakers.state(request.agent_id)

    async def ForceOpenCircuit(
        self, request: pb.ForceOpenCircuitRequest, context: Context
    ) -> pb.ForceOpenCircuitResponse:
        circuit = await self._breakers.force_open(request.agent_id, request.reason)
        return pb.ForceOpenCircuitResponse(circuit=circuit)

    async def ResetCircuit(
        self, request: pb.ResetCircuitRequest, context: Context
    ) -> pb.ResetCircuitResponse:
        circuit = await self._breakers.reset(request.agent_id, request.reason)
        return pb.ResetCircuitResponse(circuit=circuit)

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        lister = self._lister()
        agents, token = lister(request.page_size, request.page_token, request.state, request.role)
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    def _lister(self) -> Callable[[int, str, int, str], tuple[list[agent_pb2.Agent], str]]:
        """Pages of agents: spawned ones with the runtime's view, when there is one."""
        if self._spawned is not None:
            return self._spawned.list
        return self._coordinator.directory.list_agents

    def _shown(self, agent: agent_pb2.Agent) -> agent_pb2.Agent:
        """The agent as GetAgent shows it (spawned agents with the runtime's view)."""
        return self._spawned.overlay(agent) if self._spawned is not None else agent

    async def WatchAgents(
        self, request: pb.WatchAgentsRequest, context: Context
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        """Every matching agent as it is now, then the agent again after each change
        (each of its events, and draining), until the caller cancels; UNAVAILABLE when
        the coordinator stops. An agent that changes while the first list is sent may
        come twice; each message is whole."""
        wanted = set(request.agent_ids)

        def matches(agent: agent_pb2.Agent) -> bool:
            return (not request.role or agent.role == request.role) and (
                not wanted or agent.id in wanted
            )

        updates: asyncio.Queue[agent_pb2.Agent | None] = asyncio.Queue()

        def changed(record: AgentRecord | None) -> None:  # the state as of this change
            updates.put_nowait(None if record is None else record.to_proto())

        listeners = self._coordinator.state.agent_listeners
        listeners.append(changed)  # before the first list, so no change falls between
        try:
            lister = self._lister()
            token = ""
            while True:
                agents, token = lister(1000, token, 0, request.role)
                for agent in agents:
                    if matches(agent):
                        yield pb.WatchAgentsResponse(agent=agent)
                if not token:
                    break
            while True:
                update = await updates.get()
                if update is None or self._coordinator.stopping:
                    raise Unavailable("the coordinator is shutting down; watch again")
                agent = self._shown(update)
                if matches(agent):
                    yield pb.WatchAgentsResponse(agent=agent)
        finally:
            listeners.remove(changed)

    async def ReplayAgent(
        self, request: pb.ReplayAgentRequest, context: Context
    ) -> pb.ReplayAgentResponse:
        """The agent's state as of an event id, rebuilt from the log (snapshot at or
        below it plus the agent's later events), by the fold the live state uses."""
        replayed = await self._coordinator.agent_history.replay(
            request.agent_id, request.up_to_event_id
        )
        state = pb.AgentReplayState(
            agent=replayed.agent.to_proto(),
            up_to_event_id=replayed.up_to,
            event_count=replayed.agent.event_count,
            snapshot_position=replayed.snapshot_position,
            events_read=replayed.events_read,
            circuit_state=replayed.agent.circuit,
            score=replayed.reflex.score,
            memory=replayed.reflex.memory_struct(),
        )
        if replayed.time:
            state.time.FromNanoseconds(int(replayed.time * 1e9))
        return pb.ReplayAgentResponse(state=state)
