"""The one place where requests are validated and errors become gRPC statuses.

Every RPC passes through `BoundaryInterceptor`: it admits the caller (authentication,
scope from the RPC's kind, rate limit: `api/auth.py`) before anything else, checks each
request message against the rules in the protos, maps `GodelError`s to their status
with `google.rpc` details, turns anything unexpected into INTERNAL with a generic
message (the traceback goes to the log, never to the client), and counts RPCs by
method and code. The sidecars' servers use it too, without authorization or metrics.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from godel_grpc.api.auth import CALLER, Authorizer
from godel_grpc.api.validation import validate
from godel_grpc.auth.scopes import LOCAL, Principal
from godel_grpc.errors import (
    Aborted,
    FieldViolation,
    GodelError,
    InvalidArgument,
    Unimplemented,
)
from godel_grpc.metrics import CoordinatorMetrics
from godel_grpc.store.base import WrongExpectedVersion

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class BoundaryInterceptor(grpc.aio.ServerInterceptor):
    """Validation, error mapping and RPC metrics for every method."""

    def __init__(
        self,
        metrics: CoordinatorMetrics | None,
        authorizer: Authorizer | None = None,
        *,
        per_message: frozenset[str] = frozenset(),
        server_name: str = "coordinator",
    ) -> None:
        """Creates the boundary.

        Args:
            metrics: where RPCs are counted and timed; None counts nothing.
            authorizer: admits callers; None admits everyone.
            per_message: client-streaming methods whose servicer takes each message as
                it comes, bytes that do not decode as an `Undecodable`, and decides
                itself what a bad one costs (the boundary does not end the stream).
            server_name: names the server in what a caller sees of an unexpected error.
        """
        self._metrics = metrics
        self._authorizer = authorizer
        self._per_message = per_message
        self._server_name = server_name
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        """Wrapped handler per method: services are fixed once the server starts, so each
        method is looked up and wrapped once, not on every call."""
        self._meters: dict[str, _MethodMeter] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        wrapped = self._wrap(method, await continuation(handler_call_details))
        if wrapped is not None:  # unknown names are not kept: callers choose them
            self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler is None:
            return None
        if method.startswith(ALWAYS_OPEN):
            return handler
        if self._metrics is not None:
            self._meters[method] = _MethodMeter(self._metrics, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(method, handler.stream_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(method, handler.stream_stream),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _boundary(self, method: str, context: Context) -> _Boundary:
        """Around one call: a failure becomes its status, and the call is counted."""
        return _Boundary(method, context, self._meters.get(method), self._server_name)

    def _admit(self, method: str, context: Context) -> Principal:
        """The caller's principal; raises when it may not make this call."""
        if self._authorizer is None:
            return LOCAL
        principal = self._authorizer.admit(method, context.invocation_metadata())
        CALLER.set(principal)  # seen by this call only: grpc serves each call in its own task
        return principal

    def _unary(
        self, method: str, behaviour: Callable[..., Awaitable[Message]]
    ) -> Callable[..., Awaitable[Message]]:
        async def handle(request: Message, context: Context) -> Message:
            async with self._boundary(method, context):
                principal = self._admit(method, context)
                check(request)
                if self._authorizer is not None:
                    self._authorizer.guard_unary(method, principal, request)
                return await behaviour(request, context)
            raise AssertionError("unreachable: the boundary returns or raises")

        return handle

    def _unary_stream(
        self, method: str, behaviour: Callable[..., AsyncIterator[Message]]
    ) -> Callable[..., AsyncIterator[Message]]:
        async def handle(request: Message, context: Context) -> AsyncIterator[Message]:
            async with self._boundary(method, context):
                self._admit(method, context)
                check(request)
                async for response in behaviour(request, context):
                    yield response

        return handle

    def _stream_unary(
        self, method: str, behaviour: Callable[..., Awaitable[Message]]
    ) -> Callable[..., Awaitable[Message]]:
        async def handle(requests: AsyncIterator[Message], context: Context) -> Message:
            async with self._boundary(method, context):
                self._admit(method, context)
                checked = requests if method in self._per_message else _validated(requests)
                return await behaviour(checked, context)
            raise AssertionError("unreachable: the boundary returns or raises")

        return handle

    def _stream_stream(
        self, method: str, behaviour: Callable[..., Any]
    ) -> Callable[..., AsyncIterator[Message]] | Callable[..., Awaitable[None]]:
        """Wraps a response generator, or a handler that writes with context.write()."""
        if not inspect.isasyncgenfunction(behaviour):
            # A handler that writes through context.write() itself (the agent link):
            # no response generator between it and gRPC.
            async def handle_writing(requests: AsyncIterator[Message], context: Context) -> None:
                async with self._boundary(method, context):
                    self._admit(method, context)
                    checked = requests if method in self._per_message else _validated(requests)
                    await behaviour(checked, context)

            return handle_writing

        async def handle(
            requests: AsyncIterator[Message], context: Context
        ) -> AsyncIterator[Message]:
            async with self._boundary(method, context):
                self._admit(method, context)
                # Streams that answer each message (EnqueueStream) check every request
                # themselves, so one malformed message does not end the whole stream.
                checked = requests if method in self._per_message else _validated(requests)
                async for response in behaviour(checked, context):
                    yield response

        return handle


class _Boundary:
    """The context one call runs in (`BoundaryInterceptor._boundary`).

    A class rather than an ``asynccontextmanager``: a generator-based context costs two
    objects and a generator frame per call, held for a stream's whole life, and every
    agent link is such a stream.
    """

    __slots__ = ("_context", "_meter", "_method", "_server_name", "_started")

    def __init__(
        self, method: str, context: Context, meter: _MethodMeter | None, server_name: str
    ) -> None:
        self._method = method
        self._context = context
        self._meter = meter
        self._server_name = server_name
        self._started = time.perf_counter()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _traceback: Any
    ) -> None:
        code = grpc.StatusCode.OK
        try:
            if isinstance(exc, Exception) and not isinstance(exc, _ABORTED):
                error = _translate(self._method, exc, self._server_name)
                code = error.code
                await error.abort(self._context)  # raises: the caller gets the status
        finally:
            meter = self._meter
            if meter is not None:
                meter.count(_code_of(self._context, code))
                meter.seconds.observe(time.perf_counter() - self._started)


ALWAYS_OPEN = ("/grpc.health.", "/grpc.reflection.")
"""Prefixes of the standard services every boundary passes through untouched: health
checks and reflection need no token, have no rules of ours, and are not counted."""

PER_MESSAGE_VALIDATION = frozenset(
    {
        "/godel.v1.QueueService/EnqueueStream",
        "/godel.v1.TaskService/SubmitTaskStream",
        "/godel.v1.TaskService/RunTaskStream",
        "/godel.v1.AgentLinkService/Connect",
    }
)
"""The coordinator's streaming methods whose servicer checks each request itself with
`check`, instead of the boundary wrapping the request stream: EnqueueStream,
SubmitTaskStream and RunTaskStream answer a bad message in their reply and go on; the
agent link ends with the violations, but saves a generator per connected agent."""


class _MethodMeter:
    """One method's RPC metrics, resolved once: looking a labelled child up costs more
    than counting in it."""

    __slots__ = ("_by_code", "_method", "_rpcs", "seconds")

    def __init__(self, metrics: CoordinatorMetrics, method: str) -> None:
        self._rpcs = metrics.rpcs
        self._method = method
        self._by_code: dict[grpc.StatusCode, Any] = {}
        self.seconds = metrics.rpc_seconds.labels(method)

    def count(self, code: grpc.StatusCode) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._rpcs.labels(self._method, code.name)
        child.inc()


async def _validated(requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
    async for request in requests:
        check(request)
        yield request


class Undecodable:
    """Stands for request bytes that do not parse, so the handler can refuse them with
    INVALID_ARGUMENT instead of gRPC's own INTERNAL (or, for a `per_message` method,
    count them as it sees fit)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the caller's malformed input
            return Undecodable(str(exc) or type(exc).__name__)

    return parse


def check(request: Any) -> None:
    """Validates one request as the boundary does: refuses undecodable bytes, then checks
    the message against its rules (InvalidArgument). The methods of
    `PER_MESSAGE_VALIDATION` call it themselves, per message."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            [FieldViolation("", "the request is not a valid protobuf message of this RPC")],
            "malformed request: the bytes do not decode as this RPC's request message",
        )
    validate(request)


def _translate(method: str, exc: Exception, server_name: str = "coordinator") -> GodelError:
    """The error a caller should see for `exc`."""
    if isinstance(exc, GodelError):
        return exc
    if isinstance(exc, WrongExpectedVersion):
        return Aborted(exc.stream, exc.expected, exc.actual)
    if isinstance(exc, NotImplementedError):
        return Unimplemented(f"{method} is not available on this {server_name} yet")
    log.error("unexpected error in %s", method, exc_info=exc)
    return _Internal(server_name)


class _Internal(GodelError):
    """What a caller sees of a bug: a status, never a traceback."""

    def __init__(self, server_name: str) -> None:
        super().__init__(f"internal error; the {server_name} logged the details")


def _code_of(context: Context, fallback: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()  # None until a handler sets one
    return code if isinstance(code, grpc.StatusCode) else fallback


_ABORTED: tuple[type[BaseException], ...] = (grpc.aio.AbortError,)
