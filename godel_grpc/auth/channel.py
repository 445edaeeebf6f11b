"""The client side of authentication: a channel that presents a bearer token.

The token travels as ``authorization: Bearer …`` metadata on every call, added by
channel interceptors. Interceptors (not call credentials) because call credentials
only ride on TLS channels, while a coordinator on loopback with `--auth required`
takes tokens over plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from godel_grpc.auth.transport import channel_credentials


class _ClientCallDetails(grpc.aio.ClientCallDetails):
    """Call details with the token's metadata added."""


def _with_token(details: grpc.aio.ClientCallDetails, header: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", header)
    return _ClientCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
    )


class _BearerUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _BearerUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _BearerStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), requests)


class _BearerStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), requests)


def _bearer(token: str) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call shape: a channel files each interceptor under the first
    shape it implements, so one class implementing all four would see unary calls only."""
    header = f"Bearer {token}"
    return [
        _BearerUnaryUnary(header),
        _BearerUnaryStream(header),
        _BearerStreamUnary(header),
        _BearerStreamStream(header),
    ]


def open_channel(
    address: str,
    *,
    token: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to a coordinator.

    Args:
        address: ``host:port``.
        token: bearer token sent with every call; empty sends none.
        credentials: TLS credentials as built by the caller; wins over the files.
        tls_ca: PEM file of the CA that signed the coordinator's certificate; giving
            any TLS file (or `credentials`) makes the channel use TLS.
        tls_cert: PEM client certificate, for a coordinator that requires mTLS.
        tls_key: PEM key of `tls_cert`.
        options: gRPC channel options.
    """
    interceptors = _bearer(token) if token else None
    if credentials is None and (tls_ca or tls_cert or tls_key):
        credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
