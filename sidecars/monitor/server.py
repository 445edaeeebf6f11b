"""MonitorSidecarService over gRPC: proto in, a `Monitor` call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from godel_grpc._proto.godel.v1 import (
    monitor_sidecar_service_pb2,
    monitor_sidecar_service_pb2_grpc,
)
from sidecars._serving import SidecarServer, start_sidecar_server
from sidecars.monitor.monitor import Monitor

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = monitor_sidecar_service_pb2.DESCRIPTOR.services_by_name[
    "MonitorSidecarService"
].full_name


class MonitorServicer(monitor_sidecar_service_pb2_grpc.MonitorSidecarServiceServicer):
    """Translates GetSample and WatchSamples to the monitor."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    async def GetSample(
        self, request: monitor_sidecar_service_pb2.GetSampleRequest, context: Context
    ) -> monitor_sidecar_service_pb2.GetSampleResponse:
        return monitor_sidecar_service_pb2.GetSampleResponse(sample=await self._monitor.current())

    async def WatchSamples(
        self, request: monitor_sidecar_service_pb2.WatchSamplesRequest, context: Context
    ) -> AsyncIterator[monitor_sidecar_service_pb2.WatchSamplesResponse]:
        interval = (
            request.interval.ToTimedelta().total_seconds() if request.HasField("interval") else None
        )
        async for sample in self._monitor.watch(interval):
            yield monitor_sidecar_service_pb2.WatchSamplesResponse(sample=sample)


async def serve_monitor(monitor: Monitor, listen: str) -> SidecarServer:
    """Starts the monitor's gRPC server on `listen` (port 0 picks one)."""

    def register(server: grpc.aio.Server) -> None:
        monitor_sidecar_service_pb2_grpc.add_MonitorSidecarServiceServicer_to_server(
            MonitorServicer(monitor), server
        )

    return await start_sidecar_server(listen, register, [SERVICE_NAME])
