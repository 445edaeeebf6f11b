"""`client.events`: the event log, by agent or as a live subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc._proto.godel.v1 import event_service_pb2 as event_pb
from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as event_grpc
from godel_grpc.client._common import RECONNECT_FOR, Backoff, every_page
from godel_grpc.client._errors import RPCError, translated


class Events:
    """`client.events`: the coordinator's event log."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = event_grpc.EventServiceStub(channel)
        self._timeout = timeout

    @translated
    async def get_for_agent(self, agent_id: str, page_size: int = 1000) -> list[event_pb2.Event]:
        """Every event that concerns the agent, oldest first (all pages)."""
        return await every_page(
            lambda token: self._stub.ListAgentEvents(
                event_pb.ListAgentEventsRequest(
                    agent_id=agent_id, page_size=page_size, page_token=token
                ),
                timeout=self._timeout,
            ),
            "events",
        )

    async def subscribe(
        self,
        after_id: int = 0,
        types: Sequence[str] = (),
        stream: str = "",
        *,
        reconnect_for: float = RECONNECT_FOR,
    ) -> AsyncIterator[event_pb.SubscribeEventsResponse]:
        """Every event after `after_id`: recorded ones first, then live ones.

        When the coordinator goes away (UNAVAILABLE: restart, failover, dropped
        connection) the subscription reconnects by itself and resumes after the last
        event it delivered, so the caller sees every event once, in order. It gives up
        with the RPCError after `reconnect_for` seconds without reaching a coordinator.
        """
        position = after_id
        retry = Backoff(reconnect_for)
        while True:
            call = self._stub.SubscribeEvents(
                event_pb.SubscribeEventsRequest(after_id=position, types=types, stream=stream)
            )
            try:
                async for response in call:
                    retry.reset()
                    position = response.event.id
                    yield response
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or not await retry.wait():
                    raise RPCError.from_aio(error) from None
            finally:
                call.cancel()
