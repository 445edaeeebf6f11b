"""The hook through which samples will reach the coordinator.

The coordinator will show each agent's latest sample in GetAgent and export per-agent
gauges; the RPC that carries samples there does not exist yet. Until it does, the hook
is in place and called after every sample, so that wiring it up later means filling in
`report_sample_to_coordinator` and nothing else. Like any extension hook, a failure
here is logged, never fatal: the monitor's own job does not depend on the coordinator.
"""

from __future__ import annotations

import logging

from godel_grpc._proto.godel.v1 import sample_pb2

log = logging.getLogger(__name__)


class CoordinatorReporter:
    """Sends samples to the coordinator at `address`; a no-op without one."""

    def __init__(self, address: str = "") -> None:
        self.address = address
        self._announced = False

    async def report_sample_to_coordinator(self, sample: sample_pb2.Sample) -> None:
        """Reports one sample. Does nothing when no coordinator address was given."""
        if not self.address:
            return
        if not self._announced:
            self._announced = True
            log.info(
                "the coordinator does not take samples yet; reporting is a no-op",
                extra={"coordinator": self.address},
            )
