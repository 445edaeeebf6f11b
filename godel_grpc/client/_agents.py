"""`client.agents`: spawn, look up, watch and terminate agents; feedback, replay and
circuit breakers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import agent_pb2, event_pb2
from godel_grpc._proto.godel.v1 import agent_service_pb2 as agent_pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as agent_grpc
from godel_grpc.client._common import every_page
from godel_grpc.client._errors import RPCError, streamed, translated


class Agents:
    """`client.agents`: the fleet."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = agent_grpc.AgentServiceStub(channel)
        self._timeout = timeout

    @translated
    async def spawn(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> agent_pb2.Agent:
        """Starts an agent process through the coordinator's runtime, from the seed's
        spawn object (`role`, `circuitBreaker`, `reflex`, `sidecars`, ...) as a mapping
        or keywords; returns it in state STARTING."""
        request = json_format.ParseDict({**(spec or {}), **fields}, agent_pb.SpawnAgentRequest())
        response = await self._stub.SpawnAgent(request, timeout=self._timeout)
        return response.agent

    @translated
    async def terminate(
        self, agent_id: str, reason: str = "", grace_period: float | None = None
    ) -> agent_pb2.Agent:
        """Stops an agent: no new work, its running attempts get `grace_period` seconds
        (default 30), then its process and sidecars stop."""
        request = agent_pb.TerminateAgentRequest(id=agent_id, reason=reason)
        if grace_period is not None:
            request.grace_period.FromNanoseconds(int(grace_period * 1e9))
        response = await self._stub.TerminateAgent(request, timeout=self._timeout)
        return response.agent

    @translated
    async def get(self, agent_id: str) -> agent_pb2.Agent:
        """The agent with this id."""
        response = await self._stub.GetAgent(
            agent_pb.GetAgentRequest(id=agent_id), timeout=self._timeout
        )
        return response.agent

    @translated
    async def feedback(
        self, agent_id: str, feedback: Mapping[str, Any] | None = None, **fields: Any
    ) -> agent_pb.SubmitFeedbackResponse:
        """Rates an agent's work with the seed's object (`taskId`, `rating` 0 to 5,
        `comments`), given as a mapping or keyword arguments; returns the agent's score
        after it."""
        request = json_format.ParseDict(
            {**(feedback or {}), **fields}, agent_pb.SubmitFeedbackRequest()
        )
        request.agent_id = agent_id
        return await self._stub.SubmitFeedback(request, timeout=self._timeout)

    @translated
    async def get_circuit_state(self, agent_id: str) -> agent_pb.GetCircuitStateResponse:
        """The agent's circuit breaker: state, counts, opened-at and next probe time."""
        return await self._stub.GetCircuitState(
            agent_pb.GetCircuitStateRequest(agent_id=agent_id), timeout=self._timeout
        )

    @translated
    async def replay(
        self, agent: str | Sequence[event_pb2.Event], up_to_event_id: int = 0
    ) -> agent_pb.AgentReplayState:
        """The agent's state as of event `up_to_event_id` (0: the latest), rebuilt from
        the log. `agent` is its id, or, as in the seed, the events `events.get_for_agent`
        returned (their agent is the one replayed)."""
        if not isinstance(agent, str):
            ids = {event.agent_id for event in agent}
            if len(ids) != 1:
                raise ValueError("replay needs the events of exactly one agent")
            (agent,) = ids
        response = await self._stub.ReplayAgent(
            agent_pb.ReplayAgentRequest(agent_id=agent, up_to_event_id=up_to_event_id),
            timeout=self._timeout,
        )
        return response.state

    def watch(
        self, role: str = "", agent_ids: Sequence[str] = ()
    ) -> AsyncIterator[agent_pb2.Agent]:
        """Every matching agent as it is now, then each agent again on every change,
        until the caller stops iterating."""
        call = self._stub.WatchAgents(agent_pb.WatchAgentsRequest(role=role, agent_ids=agent_ids))
        return streamed(call, "agent")

    @translated
    async def force_open_circuit(
        self, agent_id: str, reason: str = ""
    ) -> agent_pb.GetCircuitStateResponse:
        """Holds the agent's breaker open (no dispatch, no trials) until
        `reset_circuit`; returns the breaker once the change is durable."""
        response = await self._stub.ForceOpenCircuit(
            agent_pb.ForceOpenCircuitRequest(agent_id=agent_id, reason=reason),
            timeout=self._timeout,
        )
        return response.circuit

    @translated
    async def reset_circuit(
        self, agent_id: str, reason: str = ""
    ) -> agent_pb.GetCircuitStateResponse:
        """Closes the agent's breaker, forced or not, forgetting its recent failures."""
        response = await self._stub.ResetCircuit(
            agent_pb.ResetCircuitRequest(agent_id=agent_id, reason=reason), timeout=self._timeout
        )
        return response.circuit

    async def wait_ready(
        self, agent_id: str, timeout: float = 30.0, interval: float = 0.05
    ) -> agent_pb2.Agent:
        """Waits until the agent's link is up (READY), as after a spawn, and returns it.

        Raises:
            TimeoutError: it was not READY within `timeout` seconds.
            RPCError: the agent is unknown or was terminated meanwhile.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            agent = await self.get(agent_id)
            if agent.state == agent_pb2.Agent.STATE_READY:
                return agent
            if agent.state == agent_pb2.Agent.STATE_TERMINATED:
                raise RPCError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"agent {agent_id} was terminated", []
                )
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"agent {agent_id} was not READY within {timeout:g} s")
            await asyncio.sleep(interval)

    @translated
    async def list(self, role: str = "") -> list[agent_pb2.Agent]:
        """Every registered agent (all pages), optionally of one role."""
        return await every_page(
            lambda token: self._stub.ListAgents(
                agent_pb.ListAgentsRequest(page_size=1000, page_token=token, role=role),
                timeout=self._timeout,
            ),
            "agents",
        )
