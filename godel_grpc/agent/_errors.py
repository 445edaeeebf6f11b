"""The two exceptions the agent SDK raises or lets handlers raise."""

from __future__ import annotations

import grpc


class TaskFailed(Exception):
    """Raised by a handler to fail its attempt with a chosen code.

    Any other exception a handler raises is reported as ``HANDLER_ERROR`` and is
    retryable, because the SDK cannot tell a bug from a passing hiccup. A handler that
    knows better raises this instead: ``retryable=False`` ends the task at once instead
    of spending further attempts on input that can never succeed.

    Attributes:
        code: machine-readable reason in UPPER_SNAKE_CASE, for example ``"BAD_INPUT"``.
        message: human-readable explanation for whoever reads the task.
        retryable: whether another attempt (possibly on another agent) may succeed.
    """

    def __init__(self, code: str, message: str = "", retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable


class AgentRejected(Exception):
    """The coordinator refused the agent in a way that retrying cannot fix.

    `Agent.run` reconnects after network failures and transient statuses, but a hello
    that is invalid, a missing permission or a server that has no agent link at all will
    fail the same way forever, so `run` raises this instead of looping.

    Attributes:
        code: the gRPC status code the coordinator answered with.
        details: the status message, meant for a human.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"coordinator rejected the agent: {code.name}: {details}")
        self.code = code
        self.details = details
