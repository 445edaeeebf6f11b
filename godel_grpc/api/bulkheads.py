"""BulkheadService: proto in, bulkhead command or query, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import bulkhead_service_pb2 as pb
from godel_grpc._proto.godel.v1 import bulkhead_service_pb2_grpc as pb_grpc
from godel_grpc.core.bulkhead_commands import BulkheadCommands

Context = grpc.aio.ServicerContext[Any, Any]


class BulkheadServicer(pb_grpc.BulkheadServiceServicer):
    """Serves BulkheadService."""

    def __init__(self, commands: BulkheadCommands) -> None:
        self._commands = commands

    async def CreateBulkhead(
        self, request: pb.CreateBulkheadRequest, context: Context
    ) -> pb.CreateBulkheadResponse:
        return pb.CreateBulkheadResponse(bulkhead=await self._commands.create(request))

    async def SubmitToPartition(
        self, request: pb.SubmitToPartitionRequest, context: Context
    ) -> pb.SubmitToPartitionResponse:
        return pb.SubmitToPartitionResponse(task=await self._commands.submit(request))

    async def GetBulkhead(
        self, request: pb.GetBulkheadRequest, context: Context
    ) -> pb.GetBulkheadResponse:
        return pb.GetBulkheadResponse(bulkhead=self._commands.get(request.id))

    async def ListBulkheads(
        self, request: pb.ListBulkheadsRequest, context: Context
    ) -> pb.ListBulkheadsResponse:
        bulkheads, token = self._commands.list(request.page_size, request.page_token)
        return pb.ListBulkheadsResponse(bulkheads=bulkheads, next_page_token=token)

    async def DeleteBulkhead(
        self, request: pb.DeleteBulkheadRequest, context: Context
    ) -> pb.DeleteBulkheadResponse:
        await self._commands.delete(request.id)
        return pb.DeleteBulkheadResponse()
