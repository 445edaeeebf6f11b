"""AgentService's circuit-breaker RPCs: read a breaker, force it open, reset it.

Breakers themselves live in `core.breakers.BreakerBook` (one per connected agent);
this module turns a breaker's view into `GetCircuitStateResponse` and carries out the
two operator commands. A command answers once the "agent.circuit_changed" event it
caused is durable, like every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import agent_service_pb2 as pb
from godel_grpc.core.breakers import settings_proto
from godel_grpc.errors import FailedPrecondition, NotFound
from godel_grpc.patterns.breaker import CircuitState, Transition

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

_STATES = {
    CircuitState.CLOSED: pb.GetCircuitStateResponse.STATE_CLOSED,
    CircuitState.OPEN: pb.GetCircuitStateResponse.STATE_OPEN,
    CircuitState.HALF_OPEN: pb.GetCircuitStateResponse.STATE_HALF_OPEN,
}


class BreakerCommands:
    """The circuit-breaker side of AgentService, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def state(self, agent_id: str) -> pb.GetCircuitStateResponse:
        """The agent's breaker as of now. NotFound for an unknown agent;
        FailedPrecondition when it is not connected (breakers live with the link)."""
        self._require_known(agent_id)
        breakers = self._coordinator.breakers
        found = breakers.view(agent_id)
        if found is None:
            raise self._not_connected(agent_id)
        view, config = found
        response = pb.GetCircuitStateResponse(
            agent_id=agent_id,
            state=_STATES[view.state],
            consecutive_failures=view.consecutive_failures,
            failure_count=view.failure_count,
            success_count=view.success_count,
            open_count=view.open_count,
            half_open_remaining=view.half_open_remaining,
            config=settings_proto(config),
            forced=view.forced,
            slow_call_count=view.slow_call_count,
            window_calls=view.window_calls,
            failure_rate=view.failure_rate,
            slow_call_rate=view.slow_call_rate,
            refused_count=view.refused_count,
            trials_in_flight=view.trials_in_flight,
        )
        if view.opened_at is not None:
            response.opened_time.FromNanoseconds(int(breakers.to_wall_time(view.opened_at) * 1e9))
        if view.next_probe_at is not None:
            response.next_probe_time.FromNanoseconds(
                int(breakers.to_wall_time(view.next_probe_at) * 1e9)
            )
        return response

    async def force_open(self, agent_id: str, reason: str) -> pb.GetCircuitStateResponse:
        """Holds the agent's breaker open until `reset`; returns it once durable."""
        self._require_known(agent_id)
        self._coordinator.require_open()
        await self._durable(agent_id, self._coordinator.breakers.force_open(agent_id, reason))
        return self.state(agent_id)

    async def reset(self, agent_id: str, reason: str) -> pb.GetCircuitStateResponse:
        """Closes the agent's breaker, forgetting its recent history; dispatch to the
        agent resumes at once."""
        self._require_known(agent_id)
        self._coordinator.require_open()
        await self._durable(agent_id, self._coordinator.breakers.reset(agent_id, reason))
        return self.state(agent_id)

    async def _durable(self, agent_id: str, changes: list[Transition] | None) -> None:
        if changes is None:
            raise self._not_connected(agent_id)
        if changes:  # their events were recorded as they happened
            await self._coordinator.journal.flush()

    def _require_known(self, agent_id: str) -> None:
        if agent_id not in self._coordinator.state.agents:
            raise NotFound("agent", agent_id)

    @staticmethod
    def _not_connected(agent_id: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"agent {agent_id!r} has no circuit breaker: it is not connected",
            subject=f"agents/{agent_id}",
            reason="AGENT_NOT_CONNECTED",
        )
