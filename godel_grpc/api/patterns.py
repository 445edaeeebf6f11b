"""PatternService: the overview query of every pattern."""

from __future__ import annotations

from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import pattern_service_pb2 as pb
from godel_grpc._proto.godel.v1 import pattern_service_pb2_grpc as pb_grpc
from godel_grpc.core import pattern_metrics
from godel_grpc.core.coordinator import Coordinator

Context = grpc.aio.ServicerContext[Any, Any]


class PatternServicer(pb_grpc.PatternServiceServicer):
    """Serves PatternService.

    Args:
        coordinator: the core.
        since: wall-clock seconds when this coordinator's counters started.
    """

    def __init__(self, coordinator: Coordinator, since: float) -> None:
        self._coordinator = coordinator
        self._since = since

    async def GetPatternMetrics(
        self, request: pb.GetPatternMetricsRequest, context: Context
    ) -> pb.GetPatternMetricsResponse:
        return pattern_metrics.read(self._coordinator, self._since)
