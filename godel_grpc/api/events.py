"""EventService: pages of an agent's events, and subscriptions that catch up then go live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc._proto.godel.v1 import event_service_pb2 as pb
from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as pb_grpc
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.core.paging import DEFAULT_PAGE_SIZE, NOT_A_TOKEN
from godel_grpc.core.upgrade import decode
from godel_grpc.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from godel_grpc.store.base import StoreClosed, StoredEvent

Context = grpc.aio.ServicerContext[Any, Any]
_SUBSCRIBE_BATCH = 1000


def to_api_event(stored: StoredEvent) -> event_pb2.Event:
    """The recorded event as the API shows it, position and stream version filled in,
    upgraded to the current schema version."""
    return decode(stored)


class EventServicer(pb_grpc.EventServiceServicer):
    """Serves EventService straight from the event store."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def ListAgentEvents(
        self, request: pb.ListAgentEventsRequest, context: Context
    ) -> pb.ListAgentEventsResponse:
        if request.agent_id not in self._coordinator.state.agents:
            raise NotFound("agent", request.agent_id)
        after = request.after_id
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument([FieldViolation("pageToken", NOT_A_TOKEN)])
            after = max(after, int(request.page_token))
        size = request.page_size or DEFAULT_PAGE_SIZE
        stored = await self._coordinator.store.read(
            after,
            size + 1,
            agent_id=request.agent_id,
            types=list(request.types),
            up_to=request.up_to_id or None,
        )
        page = stored[:size]
        token = str(page[-1].position) if len(stored) > size else ""
        return pb.ListAgentEventsResponse(
            events=[to_api_event(e) for e in page], next_page_token=token
        )

    async def SubscribeEvents(
        self, request: pb.SubscribeEventsRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeEventsResponse]:
        store = self._coordinator.store
        position = request.after_id
        types = list(request.types)
        stream = request.stream or None
        caught_up = False
        while True:
            last = await store.last_position()
            while position < last:
                try:
                    batch = await store.read(
                        position, _SUBSCRIBE_BATCH, stream=stream, types=types, up_to=last
                    )
                except StoreClosed:
                    raise _going_away() from None
                for stored in batch:
                    yield pb.SubscribeEventsResponse(event=to_api_event(stored), live=caught_up)
                position = batch[-1].position if len(batch) == _SUBSCRIBE_BATCH else last
            if self._coordinator.stopping:
                # Caught up with what this process wrote: the subscriber resumes from
                # here on the next coordinator (the client's subscribe does so itself).
                raise _going_away()
            caught_up = True
            await store.wait_for_position(position)


def _going_away() -> Unavailable:
    return Unavailable(
        "the coordinator is shutting down; subscribe again after the last event received"
    )
