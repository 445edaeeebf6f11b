"""AgentService: spawning and terminating (through the runtime) and the agent queries;
the RPCs not served yet answer UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import agent_service_pb2 as pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as pb_grpc
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.errors import FailedPrecondition
from godel_grpc.runtime.base import Runtime
from godel_grpc.runtime.spawned import SpawnedAgents

Context = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Serves AgentService from the coordinator."""

    def __init__(
        self,
        coordinator: Coordinator,
        runtime: Runtime | None = None,
        credentials: AgentCredentials | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._spawned = (
            SpawnedAgents(coordinator, runtime, credentials) if runtime is not None else None
        )

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

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        if self._spawned is not None:
            return pb.GetAgentResponse(agent=self._spawned.get(request.id))
        return pb.GetAgentResponse(agent=self._coordinator.get_agent(request.id))

    async def GetCircuitState(
        self, request: pb.GetCircuitStateRequest, context: Context
    ) -> pb.GetCircuitStateResponse:
        return self._coordinator.circuit_state(request.agent_id)

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        lister = self._spawned.list if self._spawned is not None else self._coordinator.list_agents
        agents, token = lister(request.page_size, request.page_token, request.state, request.role)
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)
