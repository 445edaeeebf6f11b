"""The agent's side of AgentLinkService.Connect: one stream at a time, reconnecting.

`Link` knows the protocol's shape (hello first, welcome back, then one reader and one
writer until the stream ends) and when to try again; what the messages mean is left to
the agent, through three callbacks.

Given several coordinator addresses (an active coordinator and its standbys on one
shared log), each reconnect tries the next one: a dead coordinator refuses the
connection and a standby answers UNAVAILABLE, so the link soon lands on the one that
is active, whichever that is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

import grpc
import grpc.aio

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc.agent._backoff import Backoff
from godel_grpc.agent._errors import AgentRejected
from godel_grpc.agent._outbox import Outbox

_log = logging.getLogger("godel_grpc.agent")

CONNECT_METHOD = "/godel.v1.AgentLinkService/Connect"

# Statuses that say "you, as configured, are not welcome": reconnecting cannot help.
_FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# How long to wait for the coordinator to end the stream after we half-closed it, or
# for the stream's status after a failed write.
_CLOSE_TIMEOUT = 2.0

_Connect: TypeAlias = (
    "grpc.aio.StreamStreamMultiCallable[link_pb2.AgentMessage, link_pb2.CoordinatorMessage]"
)
_Call: TypeAlias = "grpc.aio.StreamStreamCall[link_pb2.AgentMessage, link_pb2.CoordinatorMessage]"


class _ProtocolError(Exception):
    """The coordinator broke the link protocol; treated like a lost link."""


class Link:
    """Keeps the agent connected until its outbox is closed and delivered.

    Args:
        channel: the channel to the coordinator, or one channel per coordinator
            address; reconnects go round them in order.
        outbox: where outgoing parts wait; closing it ends the link once delivered.
        hello: makes the hello for each new stream (with the latest resume token).
        on_welcome: takes the identity the coordinator gave.
        on_message: handles a coordinator message; must not block or raise.
        heartbeat_interval: seconds between heartbeats until a welcome says otherwise.
        welcome_timeout: seconds to wait for the welcome after the hello.
        flush_timeout: seconds after the outbox closed to keep reconnecting for
            results that have not been delivered yet.
        backoff: delays between reconnect attempts.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | Sequence[grpc.aio.Channel],
        outbox: Outbox,
        *,
        hello: Callable[[], link_pb2.AgentHello],
        on_welcome: Callable[[link_pb2.AgentWelcome], None],
        on_message: Callable[[link_pb2.CoordinatorMessage], None],
        heartbeat_interval: float,
        welcome_timeout: float,
        flush_timeout: float,
        backoff: Backoff,
    ) -> None:
        channels = [channel] if isinstance(channel, grpc.aio.Channel) else list(channel)
        if not channels:
            raise ValueError("at least one channel is required")
        self._connects: list[_Connect] = [
            each.stream_stream(
                CONNECT_METHOD,
                request_serializer=link_pb2.AgentMessage.SerializeToString,
                response_deserializer=link_pb2.CoordinatorMessage.FromString,
            )
            for each in channels
        ]
        self._next = 0
        self._outbox = outbox
        self._hello = hello
        self._on_welcome = on_welcome
        self._on_message = on_message
        self._heartbeat_default = heartbeat_interval
        self._heartbeat = heartbeat_interval
        self._welcome_timeout = welcome_timeout
        self._flush_timeout = flush_timeout
        self._backoff = backoff
        self._welcomed = False

    async def run(self) -> None:
        """Connects, reconnecting with backoff, until everything is delivered.

        Raises:
            AgentRejected: the coordinator answered with a status that retrying cannot
                change.
        """
        while not self._finished():
            self._welcomed = False
            try:
                if await self._session():
                    return
                _log.warning("coordinator ended the link")
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL:
                    raise AgentRejected(exc.code(), exc.details() or "") from exc
                _log.warning(
                    "link lost", extra={"code": exc.code().name, "details": exc.details() or ""}
                )
            except (TimeoutError, _ProtocolError, asyncio.InvalidStateError) as exc:
                _log.warning("link lost: %s", exc or type(exc).__name__)
            except Exception:
                # The one place that must outlive surprises: an agent that dies on an
                # odd transport error takes its running attempts down with it.
                _log.exception("link failed unexpectedly")
            if self._welcomed:
                self._backoff.reset()
            self._next = (self._next + 1) % len(self._connects)
            await self._pause(self._backoff.next_delay())

    def _finished(self) -> bool:
        if not self._outbox.closed:
            return False
        if not self._outbox.must_deliver:
            return True
        if time.monotonic() >= self._flush_deadline():
            _log.error("giving up on undelivered results: the coordinator is unreachable")
            return True
        return False

    def _flush_deadline(self) -> float:
        closed_at = self._outbox.closed_at
        return float("inf") if closed_at is None else closed_at + self._flush_timeout

    async def _pause(self, delay: float) -> None:
        if self._outbox.closed:
            await asyncio.sleep(max(0.0, min(delay, self._flush_deadline() - time.monotonic())))
            return
        # Wake early on close: with nothing left to deliver there is no need to wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.closed_event.wait(), delay)

    async def _session(self) -> bool:
        """Runs one stream from hello to its end.

        Returns:
            True when we closed the stream after delivering everything, False when the
            coordinator ended it first.
        """
        call = self._connects[self._next]()
        try:
            await call.write(link_pb2.AgentMessage(hello=self._hello()))
            async with asyncio.timeout(self._welcome_timeout):
                first = await call.read()
            if not isinstance(first, link_pb2.CoordinatorMessage):
                raise _ProtocolError("the coordinator ended the link before its welcome")
            if not first.HasField("welcome"):
                raise _ProtocolError("the coordinator's first message carried no welcome")
            self._welcomed = True
            interval = first.welcome.heartbeat_interval.ToTimedelta().total_seconds()
            self._heartbeat = interval if interval > 0 else self._heartbeat_default
            self._outbox.on_connected()
            self._on_welcome(first.welcome)
            self._on_message(first)
            return await self._pump(call)
        finally:
            call.cancel()

    async def _pump(self, call: _Call) -> bool:
        writer = asyncio.create_task(self._write(call), name="godel-link-writer")
        reader = asyncio.create_task(self._read(call), name="godel-link-reader")
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled() and writer.exception() is None:
                # We half-closed after the last part; the coordinator ends the stream
                # once it has read everything, which is what completes the flush.
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                    await asyncio.wait_for(reader, _CLOSE_TIMEOUT)
                return True
            if not reader.done():
                # A failed write says little; the reader learns the stream's status.
                await asyncio.wait({reader}, timeout=_CLOSE_TIMEOUT)
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the stream's error, if it ended with one
                return False
            writer.result()
            return False
        finally:
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)

    async def _write(self, call: _Call) -> None:
        """The single writer: everything waiting goes out as one message."""
        while True:
            message = await self._outbox.take(self._heartbeat)
            if message is None:
                await call.done_writing()
                return
            try:
                await call.write(message)
            except BaseException:
                self._outbox.restore(message)
                raise

    async def _read(self, call: _Call) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, link_pb2.CoordinatorMessage):
                return  # end of stream
            self._on_message(message)
