"""ConvoyService: proto in, convoy command or query, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import convoy_service_pb2 as pb
from godel_grpc._proto.godel.v1 import convoy_service_pb2_grpc as pb_grpc
from godel_grpc.core.convoy_commands import ConvoyCommands

Context = grpc.aio.ServicerContext[Any, Any]


class ConvoyServicer(pb_grpc.ConvoyServiceServicer):
    """Serves ConvoyService."""

    def __init__(self, commands: ConvoyCommands) -> None:
        self._commands = commands

    async def CreateConvoy(
        self, request: pb.CreateConvoyRequest, context: Context
    ) -> pb.CreateConvoyResponse:
        return pb.CreateConvoyResponse(convoy=await self._commands.create(request))

    async def StartConvoy(
        self, request: pb.StartConvoyRequest, context: Context
    ) -> pb.StartConvoyResponse:
        return pb.StartConvoyResponse(convoy=await self._commands.start(request.id))

    async def GetConvoy(
        self, request: pb.GetConvoyRequest, context: Context
    ) -> pb.GetConvoyResponse:
        return pb.GetConvoyResponse(convoy=self._commands.get(request.id))

    async def ListConvoys(
        self, request: pb.ListConvoysRequest, context: Context
    ) -> pb.ListConvoysResponse:
        convoys, token = self._commands.list(request.page_size, request.page_token, request.state)
        return pb.ListConvoysResponse(convoys=convoys, next_page_token=token)

    async def CancelConvoy(
        self, request: pb.CancelConvoyRequest, context: Context
    ) -> pb.CancelConvoyResponse:
        return pb.CancelConvoyResponse(
            convoy=await self._commands.cancel(request.id, request.reason)
        )

    async def WatchConvoy(
        self, request: pb.WatchConvoyRequest, context: Context
    ) -> AsyncIterator[pb.WatchConvoyResponse]:
        async for convoy in self._commands.watch(request.id):
            yield pb.WatchConvoyResponse(convoy=convoy)

    async def DeleteConvoy(
        self, request: pb.DeleteConvoyRequest, context: Context
    ) -> pb.DeleteConvoyResponse:
        await self._commands.delete(request.id)
        return pb.DeleteConvoyResponse()
