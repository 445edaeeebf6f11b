"""One connected agent's link state: its leases and its outgoing message buffer.

Liveness, not durable state: a session lives as long as the agent's stream, and is
rebuilt when the agent reconnects. Everything queued for the agent while the stream is
busy is merged into one CoordinatorMessage, so a burst of assignments costs one
streamed message, not one per task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2


class AgentSession:
    """The coordinator's side of one open agent link."""

    __slots__ = (
        "_closed",
        "_pending",
        "_waiter",
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
        self._waiter: asyncio.Future[None] | None = None
        """Set while `outgoing` waits for something to send. A bare future, not an
        `asyncio.Event`: an idle fleet holds one per agent, and an event's waiter queue
        costs more than everything else the session keeps."""
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the link has been closed by either side."""
        return self._closed

    def _message(self) -> link_pb2.CoordinatorMessage:
        if self._pending is None:
            self._pending = link_pb2.CoordinatorMessage()
            self._wake()
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
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_message(self) -> link_pb2.CoordinatorMessage | None:
        """The next merged message for the agent, waiting for one; None once the session
        is closed and everything queued before has been taken."""
        if self._pending is None and not self._closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message, self._pending = self._pending, None
        return message
