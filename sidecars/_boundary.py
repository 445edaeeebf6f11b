"""Request validation and error statuses at the edge of a sidecar's gRPC server.

The coordinator's `BoundaryInterceptor` validates every message of a client stream and
aborts the call on the first bad one. The logger's `Ship` must do the opposite: its
contract is that a malformed record is dropped and counted while the stream goes on.
So the sidecars use this smaller boundary instead. It validates unary requests with
the same proto rules (`validate`) and maps `GodelError`s to the same statuses
(`GodelError.to_status`), but hands the messages of a client stream to the servicer as
they come, with `None` standing for bytes that do not decode, so that the servicer
decides what a bad record costs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from godel_grpc.api.validation import validate
from godel_grpc.errors import DETAILS_METADATA_KEY, FieldViolation, GodelError, InvalidArgument

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Undecodable:
    """Marks unary request bytes that are not a message of the RPC."""


_UNDECODABLE = _Undecodable()


class SidecarBoundary(grpc.aio.ServerInterceptor):
    """Validates unary requests and turns exceptions into proper gRPC statuses."""

    def __init__(self) -> None:
        # Services are fixed once the server runs, so each method is wrapped once.
        self._handlers: dict[str, _Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        method = handler_call_details.method
        if method in self._handlers:
            return self._handlers[method]
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        wrapped = _wrap(method, handler)
        self._handlers[method] = wrapped
        return wrapped


def _wrap(method: str, handler: _Handler) -> _Handler:
    parse = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary  # async at run time; the stubs say sync

        async def unary_unary(request: Any, context: Context) -> Any:
            async with _statuses(method, context):
                _check(request)
                return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=_lenient(parse, _UNDECODABLE),
            response_serializer=serialize,
        )
    if handler.unary_stream is not None:
        streaming: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async with _statuses(method, context):
                _check(request)
                async for response in streaming(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=_lenient(parse, _UNDECODABLE),
            response_serializer=serialize,
        )
    if handler.stream_unary is not None:
        collecting: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            async with _statuses(method, context):
                return await collecting(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, request_deserializer=_lenient(parse, None), response_serializer=serialize
        )
    return handler  # no sidecar RPC is bidirectional; nothing to guard yet


@contextlib.asynccontextmanager
async def _statuses(method: str, context: Context) -> AsyncIterator[None]:
    """Aborts the call with the status an escaping exception stands for."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except GodelError as error:
        await _abort(context, error)
    except Exception as exc:  # a bug: the caller gets a status, the log gets the traceback
        log.error("unexpected error in %s", method, exc_info=exc)
        await _abort(context, _SidecarBug())


async def _abort(context: Context, error: GodelError) -> None:
    details = error.to_status().SerializeToString()
    await context.abort(
        error.code, error.message, trailing_metadata=((DETAILS_METADATA_KEY, details),)
    )


def _check(request: Any) -> None:
    if request is _UNDECODABLE:
        raise InvalidArgument(
            [FieldViolation("", "the request is not a valid protobuf message of this RPC")]
        )
    validate(request)


def _lenient(
    parse: Callable[[bytes], Any] | None, stand_in: object
) -> Callable[[bytes], Any] | None:
    """Wraps a deserializer so that bad bytes become `stand_in` instead of INTERNAL."""
    if parse is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # whatever the parser raises, the bytes were the caller's
            return stand_in

    return tolerant


class _SidecarBug(GodelError):
    """What a caller sees of an unexpected failure."""

    def __init__(self) -> None:
        super().__init__("internal error; the sidecar logged the details")
