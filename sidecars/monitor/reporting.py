"""Reporting samples to the coordinator, which shows each agent's latest sample in
GetAgent and exports it as per-agent gauges.

Reporting is best effort: the monitor's own job (sampling, serving, its /metrics) never
depends on the coordinator. A call that fails is logged and the next sample tries again;
each call has a short deadline so a slow coordinator cannot hold sampling back.
"""

from __future__ import annotations

import logging
import os

import grpc

from godel_grpc._proto.godel.v1 import agent_service_pb2, agent_service_pb2_grpc, sample_pb2
from godel_grpc.auth.channel import open_channel

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 2.0
"""Seconds one report may take before it is given up (the next sample comes anyway)."""

_EXPECTED = {
    # Before the agent's link is up, and after it ends, the coordinator refuses samples.
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class CoordinatorReporter:
    """Sends samples of agent `agent_id` to the coordinator at `address`; a no-op
    without an address or an agent id."""

    def __init__(self, address: str = "", agent_id: str = "") -> None:
        self.address = address
        self.agent_id = agent_id
        self._channel: grpc.aio.Channel | None = None
        self._stub: agent_service_pb2_grpc.AgentServiceAsyncStub | None = None
        self._warned: set[grpc.StatusCode] = set()
        self.reported = 0
        """Samples the coordinator took."""

    async def report_sample_to_coordinator(self, sample: sample_pb2.Sample) -> None:
        """Reports one sample; failures are logged, never raised."""
        if not self.address or not self.agent_id:
            return
        if self._stub is None:
            # The agent's credentials, handed over by the runtime as the agent's are.
            self._channel = open_channel(
                self.address,
                token=os.environ.get("GODEL_TOKEN", ""),
                tls_ca=os.environ.get("GODEL_TLS_CA", ""),
                tls_cert=os.environ.get("GODEL_TLS_CERT", ""),
                tls_key=os.environ.get("GODEL_TLS_KEY", ""),
            )
            self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)
        request = agent_service_pb2.ReportAgentSampleRequest(agent_id=self.agent_id, sample=sample)
        try:
            await self._stub.ReportAgentSample(request, timeout=REPORT_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _EXPECTED:
                log.debug("sample not taken", extra={"code": code.name})
            elif code not in self._warned:  # once per kind of failure, not per sample
                self._warned.add(code)
                log.warning(
                    "the coordinator refused a sample",
                    extra={"code": code.name, "details": error.details()},
                )
            return
        self.reported += 1

    async def close(self) -> None:
        """Closes the channel, if one was opened."""
        if self._channel is not None:
            await self._channel.close()
