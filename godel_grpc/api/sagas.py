"""SagaService: proto in, saga command or query, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import saga_service_pb2 as pb
from godel_grpc._proto.godel.v1 import saga_service_pb2_grpc as pb_grpc
from godel_grpc.core.saga_commands import SagaCommands

Context = grpc.aio.ServicerContext[Any, Any]


class SagaServicer(pb_grpc.SagaServiceServicer):
    """Serves SagaService."""

    def __init__(self, commands: SagaCommands) -> None:
        self._commands = commands

    async def CreateSaga(
        self, request: pb.CreateSagaRequest, context: Context
    ) -> pb.CreateSagaResponse:
        return pb.CreateSagaResponse(saga=await self._commands.create(request))

    async def ExecuteSaga(
        self, request: pb.ExecuteSagaRequest, context: Context
    ) -> pb.ExecuteSagaResponse:
        saga = await self._commands.execute(
            request.id,
            request.input if request.HasField("input") else None,
            request.manual_compensation,
        )
        return pb.ExecuteSagaResponse(saga=saga)

    async def CompensateSaga(
        self, request: pb.CompensateSagaRequest, context: Context
    ) -> pb.CompensateSagaResponse:
        saga = await self._commands.compensate(request.id, request.reason)
        return pb.CompensateSagaResponse(saga=saga)

    async def GetSaga(self, request: pb.GetSagaRequest, context: Context) -> pb.GetSagaResponse:
        return pb.GetSagaResponse(saga=self._commands.get(request.id))

    async def ListSagas(
        self, request: pb.ListSagasRequest, context: Context
    ) -> pb.ListSagasResponse:
        sagas, token = self._commands.list(request.page_size, request.page_token, request.state)
        return pb.ListSagasResponse(sagas=sagas, next_page_token=token)

    async def WatchSaga(
        self, request: pb.WatchSagaRequest, context: Context
    ) -> AsyncIterator[pb.WatchSagaResponse]:
        async for saga in self._commands.watch(request.id):
            yield pb.WatchSagaResponse(saga=saga)

    async def DeleteSaga(
        self, request: pb.DeleteSagaRequest, context: Context
    ) -> pb.DeleteSagaResponse:
        await self._commands.delete(request.id)
        return pb.DeleteSagaResponse()
