"""AgentService: the agent queries served so far; the rest answer UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import agent_service_pb2 as pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as pb_grpc
from godel_grpc.core.coordinator import Coordinator

Context = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Serves AgentService from the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=self._coordinator.get_agent(request.id))

    async def GetCircuitState(
        self, request: pb.GetCircuitStateRequest, context: Context
    ) -> pb.GetCircuitStateResponse:
        return self._coordinator.circuit_state(request.agent_id)

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        agents, token = self._coordinator.list_agents(
            request.page_size, request.page_token, request.state, request.role
        )
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)
