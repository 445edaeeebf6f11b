"""The one exception the client raises for a failed call, and the two wrappers that
turn grpc.aio's errors into it: one for unary calls, one for streams."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from godel_grpc.errors import DETAILS_METADATA_KEY


class RPCError(Exception):
    """A call failed: the status code, message and parsed `google.rpc` details.

    Attributes:
        code: the gRPC status code.
        message: the server's message.
        reason: `ErrorInfo.reason` when the server sent one (for example "NOT_FOUND").
        field_violations: (field, description) pairs of a `BadRequest`.
        retry_after: seconds from `RetryInfo`, if any.
        details: every detail message, unpacked where the type is known.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: list[object]) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.reason = ""
        self.field_violations: list[tuple[str, str]] = []
        self.retry_after: float | None = None
        for detail in details:
            if isinstance(detail, error_details_pb2.ErrorInfo):
                self.reason = detail.reason
            elif isinstance(detail, error_details_pb2.BadRequest):
                self.field_violations.extend(
                    (v.field, v.description) for v in detail.field_violations
                )
            elif isinstance(detail, error_details_pb2.RetryInfo):
                self.retry_after = detail.retry_delay.ToNanoseconds() / 1e9

    @classmethod
    def from_aio(cls, error: grpc.aio.AioRpcError) -> RPCError:
        """Builds the error from a failed grpc.aio call, parsing its status details."""
        details: list[object] = []
        for key, value in error.trailing_metadata() or ():
            if key == DETAILS_METADATA_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for packed in status.details:
                    for kind in _KNOWN:
                        if packed.Is(kind.DESCRIPTOR):
                            message = kind()
                            packed.Unpack(message)
                            details.append(message)
                            break
                    else:
                        details.append(packed)
        return cls(error.code(), error.details() or "", details)


_KNOWN = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
)


P = ParamSpec("P")
R = TypeVar("R")


def translated(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turns grpc.aio errors of a unary call into RPCError."""

    @functools.wraps(call)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except grpc.aio.AioRpcError as error:
            raise RPCError.from_aio(error) from None

    return wrapper


async def streamed(call: Any, field: str) -> AsyncIterator[Any]:
    """The `field` of each message of a server stream, grpc.aio errors as RPCError; the
    call is cancelled when the caller stops reading early, so it never stays open."""
    try:
        async for response in call:
            yield getattr(response, field)
    except grpc.aio.AioRpcError as error:
        raise RPCError.from_aio(error) from None
    finally:
        call.cancel()
