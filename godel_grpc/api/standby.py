"""Refuses every API call while this coordinator is a standby.

A coordinator on a shared PostgreSQL log listens before it owns the log: it waits on
the log's advisory lock while another coordinator is active. Meanwhile health checks
and reflection are answered (health says NOT_SERVING), and every other call gets
UNAVAILABLE, which clients and agents treat as "try again, maybe elsewhere". Nothing
reaches the coordinator core before it has recovered its state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from godel_grpc.api.interceptor import ALWAYS_OPEN
from godel_grpc.errors import Unavailable


class StandbyGate(grpc.aio.ServerInterceptor):
    """Lets calls through only once `activate` was called. Must be the outermost
    interceptor, so inner ones never see (or cache) the refusing handlers."""

    def __init__(self) -> None:
        self.active = False
        self._refusals: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def activate(self) -> None:
        """This coordinator owns the log and has recovered: serve everything."""
        self.active = True
        self._refusals.clear()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if self.active or method.startswith(ALWAYS_OPEN):
            return await continuation(handler_call_details)
        refusal = self._refusals.get(method)
        if refusal is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            refusal = self._refusals[method] = _refusing(handler)
        return refusal


async def _refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    error = Unavailable(
        "this coordinator is a standby: another coordinator is active on the same event "
        "log; retry, or call the active one",
        reason="STANDBY",
    )
    await error.abort(context)


def _refusing(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that answers UNAVAILABLE."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _refuse(context)

    async def streaming(
        _request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await _refuse(context)
        yield  # pragma: no cover - abort raises; this makes the function a generator

    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming, handler.request_deserializer, serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, handler.request_deserializer, serialize)
    return grpc.stream_stream_rpc_method_handler(streaming, handler.request_deserializer, serialize)
