"""AgentLinkService.Connect: one bidirectional stream per agent.

The first message must be a hello; after the welcome, a reader task feeds the agent's
messages to the coordinator while this handler streams the session's merged outgoing
messages. Whichever side ends first ends the link, and the session is always closed in
`finally`, so a lost agent's leases return to the queue. A message that breaks the
protos' rules (or does not decode) ends the link with INVALID_ARGUMENT and its field
violations, so the agent learns why.

The handler checks each message itself (the boundary's `PER_MESSAGE_VALIDATION`): a
link lives as long as its agent, and one less generator layer per link is memory every
connected agent saves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as pb
from godel_grpc._proto.godel.v1 import agent_link_service_pb2_grpc as pb_grpc
from godel_grpc.api.auth import check_link_identity
from godel_grpc.api.interceptor import check
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.core.session import AgentSession
from godel_grpc.errors import FieldViolation, InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]
HELLO_TIMEOUT = 10.0
"""Seconds a new link may take to send its hello."""


class AgentLinkServicer(pb_grpc.AgentLinkServiceServicer):
    """Serves agent links from the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.CoordinatorMessage]:
        # Messages are read with context.read(): iterating request_iterator would make
        # one more generator per link, for as long as the link lives.
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            first = grpc.aio.EOF
        if first is grpc.aio.EOF:
            raise InvalidArgument([FieldViolation("hello", "the first message must carry a hello")])
        if isinstance(first, pb.AgentMessage) and first.HasField("hello"):
            check_link_identity(first.hello)
        check(first)  # the hello's rules included
        if not first.HasField("hello"):
            raise InvalidArgument([FieldViolation("hello", "the first message must carry a hello")])
        session = await self._coordinator.links.open_session(first.hello)
        reader = asyncio.get_running_loop().create_task(self._read(session, first, context))
        del first  # the reader has it; this frame lives as long as the link
        sent = self._coordinator.metrics.link_batch.labels("to_agent")
        try:
            while (outgoing := await session.next_message()) is not None:
                if outgoing.assignments:
                    sent.observe(len(outgoing.assignments))
                yield outgoing
        finally:
            reader.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await reader  # raises the reader's InvalidArgument for a bad message
            finally:
                self._coordinator.links.close_session(
                    session, session.close_reason or "stream closed"
                )

    async def _read(
        self,
        session: AgentSession,
        first: pb.AgentMessage,
        context: Context,
    ) -> None:
        links = self._coordinator.links
        reason = "stream closed by agent"
        try:
            if (
                first.results
                or first.progress
                or first.released_attempt_ids
                or first.draining
                or first.memory_writes
            ):
                links.on_agent_message(session, first)
            del first  # the hello is folded in; keep nothing of it for the link's life
            received = self._coordinator.metrics.link_batch.labels("from_agent")
            while (message := await context.read()) is not grpc.aio.EOF:
                check(message)
                if message.results:
                    received.observe(len(message.results))
                links.on_agent_message(session, message)
        except asyncio.CancelledError:
            raise
        except InvalidArgument:
            links.close_session(session, "malformed message from the agent")
            raise
        except Exception as exc:  # a broken stream is how lost agents usually show up
            reason = f"stream failed: {type(exc).__name__}"
        links.close_session(session, reason)
