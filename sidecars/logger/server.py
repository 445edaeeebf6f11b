"""LoggerSidecarService over gRPC: proto in, a `LogBook` call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from godel_grpc._proto.godel.v1 import (
    log_record_pb2,
    logger_sidecar_service_pb2,
    logger_sidecar_service_pb2_grpc,
)
from godel_grpc.api.interceptor import Undecodable
from sidecars._serving import SidecarServer, start_sidecar_server
from sidecars.logger.book import LogBook
from sidecars.logger.filter import TailFilter

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = logger_sidecar_service_pb2.DESCRIPTOR.services_by_name[
    "LoggerSidecarService"
].full_name


class LoggerServicer(logger_sidecar_service_pb2_grpc.LoggerSidecarServiceServicer):
    """Translates Ship and Tail to the book."""

    def __init__(self, book: LogBook) -> None:
        self._book = book

    async def Ship(
        self,
        request_iterator: AsyncIterator[log_record_pb2.LogRecord | Undecodable],
        context: Context,
    ) -> logger_sidecar_service_pb2.ShipResponse:
        counts = await self._book.ship(request_iterator)
        return logger_sidecar_service_pb2.ShipResponse(
            received=counts.received,
            written=counts.written,
            filtered=counts.filtered,
            invalid=counts.invalid,
        )

    async def Tail(
        self, request: logger_sidecar_service_pb2.TailRequest, context: Context
    ) -> AsyncIterator[logger_sidecar_service_pb2.TailResponse]:
        wanted = TailFilter(min_level=request.min_level, task_id=request.task_id)
        backlog, cursor = await self._book.tail(request.lines, wanted)
        for record in backlog:
            yield logger_sidecar_service_pb2.TailResponse(record=record)
        if request.follow:
            async for record in self._book.follow(cursor, wanted):
                yield logger_sidecar_service_pb2.TailResponse(record=record)


async def serve_logger(book: LogBook, listen: str) -> SidecarServer:
    """Starts the logger's gRPC server on `listen` (port 0 picks one)."""

    def register(server: grpc.aio.Server) -> None:
        logger_sidecar_service_pb2_grpc.add_LoggerSidecarServiceServicer_to_server(
            LoggerServicer(book), server
        )

    return await start_sidecar_server(listen, register, [SERVICE_NAME])
