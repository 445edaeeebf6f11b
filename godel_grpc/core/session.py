"""One connected agent's link state: its leases and its outgoing message buffer.

Liveness, not durable state: a session lives as long as the agent's stream, and is
rebuilt when the agent reconnects. Everything queued for the agent while the stream is
busy is merged into one CoordinatorMessage, so a burst of assignments costs one
streamed message, not one per task.

Messages are pushed: the link attaches a writer, and a flush task runs only while there
is something to write. An idle link (most of a large fleet) holds no task, coroutine or
future of its own here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2

Write = Callable[[link_pb2.CoordinatorMessage], Awaitable[None]]
"""Sends one message down the link (the stream's ``context.write``)."""


class AgentSession:
    """The coordinator's side of one open agent link."""

    __slots__ = (
        "_closed",
        "_flusher",
        "_on_end",
        "_pending",
        "_write",
        "agent_id",
        "capacity",
        "close_reason",
        "draining",
        "last_seen",
        "leases",
        "name",
    )

    def __init__(self, agent_id: str, name: str, capacity: int) -> None:
        self.agent_id = agent_id
        self.name = name
        self.capacity = capacity
        self.leases: dict[str, str] = {}
        """Attempt id → task id, for every attempt leased on this link and not finished."""
        self.last_seen = time.monotonic()
        self.draining = False
        self.close_reason = ""
        self._pending: link_pb2.CoordinatorMessage | None = None
        self._write: Write | None = None
        self._on_end: Callable[[], None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the link has been closed by either side."""
        return self._closed

    def attach(self, write: Write, on_end: Callable[[], None]) -> None:
        """Starts delivering through `write`, the welcome first.

        Args:
            write: sends one message down the link.
            on_end: called once, when the session is closed and everything queued
                before the close has been written (or could not be): the link may end.
        """
        self._write = write
        self._on_end = on_end
        # The welcome goes out alone, taken now: what is queued from here on (the first
        # assignments, often in this same loop turn) follows in the next message.
        welcome, self._pending = self._pending, None
        if welcome is None:
            self._flush_soon()
        else:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(welcome))

    async def detach(self) -> None:
        """Stops delivering (the link is over); a write still under way is cancelled."""
        self._write = None
        self._on_end = None
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    def _message(self) -> link_pb2.CoordinatorMessage:
        if self._pending is None:
            self._pending = link_pb2.CoordinatorMessage()
            self._flush_soon()
        return self._pending

    def send_welcome(self, welcome: link_pb2.AgentWelcome) -> None:
        """Queues the welcome; it is the first thing the agent receives."""
        self._message().welcome.CopyFrom(welcome)

    def send_assignments(self, assignments: Iterable[link_pb2.TaskAssignment]) -> None:
        """Queues new leases for the agent."""
        self._message().assignments.extend(assignments)

    def send_cancellation(self, task_id: str, attempt_id: str, reason: str) -> None:
        """Tells the agent to stop an attempt."""
        self._message().cancellations.add(task_id=task_id, attempt_id=attempt_id, reason=reason)

    def send_feedback(self, feedback: link_pb2.AgentFeedback) -> None:
        """Passes feedback on the agent's work on to it (reflex feedback loop)."""
        self._message().feedback.append(feedback)

    def send_drain(self) -> None:
        """Asks the agent to finish its work and disconnect."""
        self._message().drain = True

    def close(self, reason: str) -> None:
        """Ends the outgoing stream after whatever is already queued."""
        if not self._closed:
            self._closed = True
            self.close_reason = reason
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Starts a flush when there is something to write and none is running (a
        running one picks up whatever is queued meanwhile, merged into one message)."""
        if self._write is None or self._flusher is not None:
            return
        if self._pending is not None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(None))
        elif self._closed:
            self._end()

    async def _flush(self, first: link_pb2.CoordinatorMessage | None) -> None:
        """Writes `first`, then whatever is queued, until nothing is; takes each message
        only when it is its turn, so that everything queued meanwhile goes in it."""
        try:
            if first is not None and self._write is not None:
                await self._write(first)
            while self._pending is not None and self._write is not None:
                message, self._pending = self._pending, None
                await self._write(message)
        except Exception as exc:  # the stream broke under the write: the agent is gone
            self.close(f"stream failed: {type(exc).__name__}")
        finally:
            self._flusher = None
        if self._closed:
            self._end()

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()
