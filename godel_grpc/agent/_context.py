"""What a handler sees of its attempt: the task's fields and a way to talk back."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from godel_grpc.agent._memory import Memory

_task_logger = logging.getLogger("godel_grpc.agent.task")

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Spellings people reach for out of habit; the link only knows the four above.
_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}


class Reporter(Protocol):
    """Where a context's progress and log lines go.

    The agent plugs in one that queues them onto the link. Both methods may be called
    from handler threads, so implementations must be thread-safe.
    """

    def report_progress(self, task_id: str, attempt_id: str, fraction: float, message: str) -> None:
        """Records the latest progress of an attempt."""

    def report_log(self, task_id: str, level: str, message: str) -> None:
        """Records one log line written while running a task."""


class TaskContext:
    """One attempt of one task, as handed to a handler.

    Handlers read the task's fields from here and report back through `progress` and
    `log`. The context can be built directly (every field has a default) so that
    handlers are testable without an agent or a coordinator.

    Attributes:
        task_id: the task's id.
        attempt_id: the lease id of this attempt; a retry gets a new one.
        attempt: which attempt this is, starting at 1.
        title: the task's title.
        role: the role the task targeted, or ``""``.
        action: the action the task targeted, or ``""``.
        priority: the task's priority.
        payload: the task's input as plain JSON values. The wire format
            (``google.protobuf.Struct``) only knows doubles; whole numbers are handed
            over as ints, others as floats.
        labels: the task's labels.
        idempotency_key: stable across attempts of the same task; use it to make side
            effects happen once even when an attempt is retried.
        timeout: seconds the attempt may run, or None for no limit.
        agent_id: the id the coordinator gave the agent running the attempt.
        agent_name: that agent's name.
        memory: the agent's reflex memory (``get``/``set``/``delete``), shared by its
            attempts and kept by the coordinator; a standalone one when built directly.
        score: the agent's reflex score (0 to 5) when the task was leased; 0 without
            feedback or with the reflex feedback loop off.
        feedback_count: feedback records the agent had received by then.
        lessons: its most recent feedback comments, oldest first, for example to put
            into an AI agent's prompt.
        cancelled: set when the attempt is cancelled or times out. Async handlers are
            cancelled outright; threads cannot be, so sync handlers should check
            ``cancelled.is_set()`` between steps and return early.
    """

    def __init__(
        self,
        *,
        task_id: str,
        attempt_id: str,
        attempt: int = 1,
        title: str = "",
        role: str = "",
        action: str = "",
        priority: str = "",
        payload: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str = "",
        timeout: float | None = None,
        agent_id: str = "",
        agent_name: str = "",
        reporter: Reporter | None = None,
        memory: Memory | None = None,
        score: float = 0.0,
        feedback_count: int = 0,
        lessons: list[str] | None = None,
    ) -> None:
        self.task_id = task_id
        self.attempt_id = attempt_id
        self.attempt = attempt
        self.title = title
        self.role = role
        self.action = action
        self.priority = priority
        self.payload: dict[str, Any] = dict(payload or {})
        self.labels: dict[str, str] = dict(labels or {})
        self.idempotency_key = idempotency_key
        self.timeout = timeout
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.memory = memory if memory is not None else Memory()
        self.score = score
        self.feedback_count = feedback_count
        self.lessons: list[str] = list(lessons or [])
        self.cancelled = asyncio.Event()
        self._reporter = reporter

    async def progress(self, fraction: float, message: str = "") -> None:
        """Reports how far the attempt has got.

        Only the latest report per attempt is kept until the link sends it, so calling
        this often is cheap. It is a coroutine for async handlers; a sync handler's
        thread has no loop to await on and reports through `log` instead.

        Args:
            fraction: completed share of the work; clamped to 0.0..1.0.
            message: a short note about the current step.

        Raises:
            ValueError: if `fraction` is not a number.
        """
        if math.isnan(fraction):
            raise ValueError("progress fraction must be a number between 0 and 1")
        clamped = min(1.0, max(0.0, float(fraction)))
        if self._reporter is not None:
            self._reporter.report_progress(self.task_id, self.attempt_id, clamped, message)

    def log(self, level: str, message: str) -> None:
        """Writes a log line that belongs to this task.

        The line goes to the agent's own log and over the link to the coordinator.
        Safe to call from a sync handler's thread.

        Args:
            level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
            message: the text of the line.

        Raises:
            ValueError: for an unknown level.
        """
        name = level.lower()
        name = _ALIASES.get(name, name)
        if name not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}")
        _task_logger.log(
            _LEVELS[name], message, extra={"task_id": self.task_id, "attempt_id": self.attempt_id}
        )
        if self._reporter is not None:
            self._reporter.report_log(self.task_id, name, message)

    def __repr__(self) -> str:
        return (
            f"TaskContext(task_id={self.task_id!r}, attempt_id={self.attempt_id!r}, "
            f"attempt={self.attempt})"
        )
