"""The exception tree of the coordinator, and its one mapping to gRPC statuses.

Domain code raises these; the server interceptor turns them into a status with
`google.rpc` details (AIP-193). Nothing else in the code base picks status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "godel.v1"
DETAILS_METADATA_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule of one request field, with its path (`requests[3].role`)."""

    field: str
    description: str


class GodelError(Exception):
    """Base of every error a caller may see.

    Attributes:
        code: the gRPC status code.
        reason: UPPER_SNAKE machine-readable reason, sent in `google.rpc.ErrorInfo`.
        metadata: extra `ErrorInfo` metadata (for example the resource id).
    """

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata

    def details(self) -> list[Message]:
        """The `google.rpc` detail messages beyond ErrorInfo; subclasses add theirs."""
        return []

    def to_status(self) -> status_pb2.Status:
        """The full `google.rpc.Status`, ErrorInfo first."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
        status.details.add().Pack(info)
        for detail in self.details():
            status.details.add().Pack(detail)
        return status

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Ends the call with this error's status, its message and its details in the
        trailers (``grpc-status-details-bin``); raises, as `context.abort` does."""
        await context.abort(
            self.code,
            self.message,
            trailing_metadata=((DETAILS_METADATA_KEY, self.to_status().SerializeToString()),),
        )


class InvalidArgument(GodelError):
    """The request is malformed; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str = "") -> None:
        self.violations = list(violations)
        if not message:
            first = self.violations[0]
            more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
            message = f"{first.field}: {first.description}{more}"
        super().__init__(message)

    def details(self) -> list[Message]:
        request = error_details_pb2.BadRequest()
        for violation in self.violations:
            request.field_violations.add(field=violation.field, description=violation.description)
        return [request]


class NotFound(GodelError):
    """The addressed resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(f"{resource_type} {resource_id!r} not found")
        self.resource_type = resource_type
        self.resource_id = resource_id

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type, resource_name=self.resource_id
            )
        ]


class AlreadyExists(GodelError):
    """A resource with that name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(GodelError):
    """The resource is not in a state that allows the operation (AIP-216)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        violation_type: str = "STATE",
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.subject = subject
        self.violation_type = violation_type

    def details(self) -> list[Message]:
        failure = error_details_pb2.PreconditionFailure()
        failure.violations.add(
            type=self.violation_type, subject=self.subject, description=self.message
        )
        return [failure]


class ResourceExhausted(GodelError):
    """A limit was reached; the caller may retry after `retry_after` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        subject: str,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.subject = subject
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        failure = error_details_pb2.QuotaFailure()
        failure.violations.add(subject=self.subject, description=self.message)
        out: list[Message] = [failure]
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            out.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return out


class DeadlineExceeded(GodelError):
    """The caller's deadline passed while the coordinator held the call (for example a
    producer blocked on a full queue); nothing was changed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unavailable(GodelError):
    """The coordinator cannot serve the call right now (for example, shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Unimplemented(GodelError):
    """The RPC exists in the API but this coordinator does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class OutOfRange(GodelError):
    """A position or offset past the end of what exists (for example an event id past
    the end of the log); unlike INVALID_ARGUMENT, the same request may succeed later."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"

    def __init__(self, message: str, *, subject: str) -> None:
        super().__init__(message)
        self.subject = subject

    def details(self) -> list[Message]:
        request = error_details_pb2.BadRequest()
        request.field_violations.add(field=self.subject, description=self.message)
        return [request]


class Aborted(GodelError):
    """A concurrent writer changed the stream first (optimistic concurrency): the
    append's expected stream version did not match. Read the stream again and retry."""

    code = grpc.StatusCode.ABORTED
    reason = "WRONG_EXPECTED_VERSION"

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, the writer expected {expected}",
            stream=stream,
            expected_version=str(expected),
            actual_version=str(actual),
        )


class Unauthenticated(GodelError):
    """The call carries no credentials the coordinator accepts (missing, malformed,
    unknown or revoked bearer token)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(GodelError):
    """The caller is known but its principal may not do this (a scope it lacks, or an
    agent acting as another agent)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"
