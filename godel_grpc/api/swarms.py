"""SwarmService: proto in, swarm command or query, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import swarm_service_pb2 as pb
from godel_grpc._proto.godel.v1 import swarm_service_pb2_grpc as pb_grpc
from godel_grpc.core.swarm_commands import SwarmCommands

Context = grpc.aio.ServicerContext[Any, Any]


class SwarmServicer(pb_grpc.SwarmServiceServicer):
    """Serves SwarmService."""

    def __init__(self, commands: SwarmCommands) -> None:
        self._commands = commands

    async def CreateSwarm(
        self, request: pb.CreateSwarmRequest, context: Context
    ) -> pb.CreateSwarmResponse:
        return pb.CreateSwarmResponse(swarm=await self._commands.create(request))

    async def SubmitSwarmTask(
        self, request: pb.SubmitSwarmTaskRequest, context: Context
    ) -> pb.SubmitSwarmTaskResponse:
        return pb.SubmitSwarmTaskResponse(task=await self._commands.submit(request))

    async def GetSwarm(self, request: pb.GetSwarmRequest, context: Context) -> pb.GetSwarmResponse:
        return pb.GetSwarmResponse(swarm=self._commands.get(request.id))

    async def ListSwarms(
        self, request: pb.ListSwarmsRequest, context: Context
    ) -> pb.ListSwarmsResponse:
        swarms, token = self._commands.list(request.page_size, request.page_token)
        return pb.ListSwarmsResponse(swarms=swarms, next_page_token=token)

    async def DeleteSwarm(
        self, request: pb.DeleteSwarmRequest, context: Context
    ) -> pb.DeleteSwarmResponse:
        await self._commands.delete(request.id)
        return pb.DeleteSwarmResponse()
