"""AgentLinkService.Connect: one bidirectional stream per agent.

The first message must be a hello. After the welcome, the handler reads the agent's
messages and feeds them to the coordinator, while the session writes its merged
outgoing messages through ``context.write`` from a flush task that runs only while
there is something to send. Whichever side ends first ends the link: the agent by
closing its stream, the coordinator by closing the session (the handler then stops
reading once everything queued has been written). The session is always closed in
`finally`, so a lost agent's leases return to the queue. A message that breaks the
protos' rules (or does not decode) ends the link with INVALID_ARGUMENT and its field
violations, so the agent learns why.

Why this shape: a link lives as long as its agent, so what it holds while idle is paid
once per connected agent. Here an idle link is the handler waiting on its next read
and nothing more: no response generator, no reader task, no waiter. The handler checks
each message itself (the boundary's `PER_MESSAGE_VALIDATION`) and reads with
``context.read()``, which adds no generator either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as pb
from godel_grpc._proto.godel.v1 import agent_link_service_pb2_grpc as pb_grpc
from godel_grpc.api.auth import check_link_identity
from godel_grpc.api.interceptor import check
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.errors import FieldViolation, InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]
HELLO_TIMEOUT = 10.0
"""Seconds a new link may take to send its hello."""


class AgentLinkServicer(pb_grpc.AgentLinkServiceServicer):
    """Serves agent links from the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def Connect(  # type: ignore[override]  # grpc.aio's read/write form returns None
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> None:
        first = await self._hello(context)
        links = self._coordinator.links
        session = await links.open_session(first.hello)
        handler = asyncio.current_task()
        assert handler is not None
        ending = False  # the session asked this handler to stop reading
        waiting = False  # the handler is suspended on its next read, and only there

        def end() -> None:
            # The session is closed and its last messages are written: stop reading, so
            # the handler returns and the agent sees its stream end. A read under way is
            # cancelled; otherwise the handler is running (this is called from it) and
            # sees `ending` before it reads again, so no cancellation can land anywhere
            # else (in gRPC's code after the handler, say).
            nonlocal ending
            ending = True
            if waiting:
                handler.cancel()

        sent = self._coordinator.metrics.link_batch.labels("to_agent")

        async def write(message: pb.CoordinatorMessage) -> None:
            if message.assignments:
                sent.observe(len(message.assignments))
            await context.write(message)

        session.attach(write, end)
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
            while not ending:
                waiting = True
                message = await context.read()
                waiting = False
                if message is grpc.aio.EOF:
                    break
                check(message)
                if message.results:
                    received.observe(len(message.results))
                links.on_agent_message(session, message)
        except asyncio.CancelledError:
            if not ending:
                raise  # the call itself was cancelled (the agent vanished, the server stops)
            handler.uncancel()
        except InvalidArgument:
            reason = "malformed message from the agent"
            raise
        except Exception as exc:  # a broken stream is how lost agents usually show up
            reason = f"stream failed: {type(exc).__name__}"
        finally:
            ending, waiting = True, False
            links.close_session(session, session.close_reason or reason)
            await session.detach()

    async def _hello(self, context: Context) -> pb.AgentMessage:
        """The link's first message, which must be a valid hello the caller may send."""
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            first = grpc.aio.EOF
        if first is grpc.aio.EOF:
            raise InvalidArgument([FieldViolation("hello", "the first message must carry a hello")])
        if isinstance(first, pb.AgentMessage) and first.HasField("hello"):
            check_link_identity(first.hello)
        check(first)  # the hello's rules included
        if not isinstance(first, pb.AgentMessage) or not first.HasField("hello"):
            raise InvalidArgument([FieldViolation("hello", "the first message must carry a hello")])
        return first
