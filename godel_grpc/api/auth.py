"""Who may call what: the authorization step of the boundary interceptor.

Every RPC of the API is admitted here before its request is even validated, from the
RPC's `(godel.v1.kind)` method option: a command needs ``write``, a query ``read``, the
agent link ``agent`` (bound to one agent name), and ``admin`` covers them all. Default
deny: an RPC this table does not know, or one without a kind, is refused to everyone.
Health and reflection never reach this (the interceptor passes them through).

Order of refusals: no token → UNAUTHENTICATED; an unknown or revoked token →
UNAUTHENTICATED (the same answer, so a caller cannot tell which); a known principal
without the scope → PERMISSION_DENIED; over its request rate → RESOURCE_EXHAUSTED with
RetryInfo. Every refusal carries an ErrorInfo saying why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from godel_grpc._proto.godel.v1 import agent_link_service_pb2, options_pb2
from godel_grpc.auth.ratelimit import RateLimiter
from godel_grpc.auth.scopes import LOCAL, Principal, required_scope
from godel_grpc.auth.tokens import TokenFile
from godel_grpc.errors import PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

CALLER: ContextVar[Principal] = ContextVar("godel_caller", default=LOCAL)
"""The principal of the call this task serves, set by the boundary once it admitted the
call, for checks that depend on what the caller sends: the agent link reads its own
messages, so its hello is checked there (`check_link_identity`)."""
REPORT_SAMPLE_METHOD = "/godel.v1.AgentService/ReportAgentSample"
"""A monitor sidecar's report, made with its agent's credentials, for that agent only."""


def method_kinds(services: Iterable[ServiceDescriptor]) -> dict[str, int]:
    """``/package.Service/Method`` → its `(godel.v1.kind)` value (0 when missing)."""
    kinds: dict[str, int] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            kinds[f"/{service.full_name}/{method.name}"] = int(options.Extensions[options_pb2.kind])
    return kinds


class Authorizer:
    """Decides, per call, who the caller is and whether it may make the call.

    Args:
        kinds: the method kind table (`method_kinds`).
        tokens: the token store; None turns authentication off (every call is the
            local admin principal), which the safe-defaults rule allows on loopback.
        limiter: per-principal request rate limits.
        clock: monotonic seconds, injected for tests.
        agent_name: the name of the agent with an id, or None for an unknown one; lets
            calls that name an agent by id be checked against the agent credentials
            are bound to.
    """

    def __init__(
        self,
        kinds: dict[str, int],
        tokens: TokenFile | None,
        limiter: RateLimiter,
        clock: Callable[[], float] = time.monotonic,
        agent_name: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self._kinds = kinds
        self._tokens = tokens
        self._limiter = limiter
        self._clock = clock
        self._agent_name = agent_name

    def admit(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The caller's principal, when it may make this call.

        Raises:
            Unauthenticated: no token, or one the store does not know (or revoked).
            PermissionDenied: the principal lacks the scope, or the RPC has no kind.
            ResourceExhausted: the principal is over its request rate.
        """
        scope = required_scope(self._kinds.get(method, 0))
        if scope is None:
            log.error("refusing %s: the RPC has no (godel.v1.kind) option", method)
            raise PermissionDenied(
                f"{method} declares no kind, so no one may call it",
                reason="METHOD_KIND_MISSING",
                method=method,
            )
        principal = self._authenticate(metadata)
        if not principal.allows(scope):
            raise PermissionDenied(
                f"{method} needs the {scope!r} scope; the credentials of "
                f"{principal.name!r} have {', '.join(sorted(principal.scopes)) or 'none'}",
                reason="SCOPE_MISSING",
                method=method,
                required_scope=scope,
            )
        wait = self._limiter.take(principal.id, self._clock())
        if wait > 0:
            raise ResourceExhausted(
                f"{principal.name!r} is over its rate of {self._limiter.rate:g} requests "
                "per second",
                subject=f"principals/{principal.name}",
                retry_after=wait,
                reason="RATE_LIMITED",
            )
        return principal

    def _authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        if self._tokens is None:
            return LOCAL
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            raise Unauthenticated(
                "this call needs a bearer token: send `authorization: Bearer <token>`",
                reason="TOKEN_MISSING",
            )
        scheme, _, token = str(values[0]).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "the authorization header must read `Bearer <token>`", reason="TOKEN_MALFORMED"
            )
        principal = self._tokens.principal_for(token.strip())
        if principal is None:
            raise Unauthenticated("the token is unknown or revoked", reason="TOKEN_INVALID")
        return principal

    def guard_unary(self, method: str, principal: Principal, request: Any) -> None:
        """Checks a unary call where the principal's identity matters: an agent's
        credentials report samples of that agent only."""
        if method != REPORT_SAMPLE_METHOD or principal is LOCAL:
            return
        name = self._agent_name(request.agent_id)
        if name is None or not principal.may_act_as(name):
            raise PermissionDenied(
                f"the credentials of {principal.name!r} may report samples only of agent "
                f"{principal.agent!r}",
                reason="AGENT_IDENTITY_MISMATCH",
                agent=request.agent_id,
            )


def check_link_identity(hello: agent_link_service_pb2.AgentHello) -> None:
    """Refuses a hello that names another agent than the one the caller's credentials
    are bound to: an agent may open only its own link, and act only as itself."""
    principal = CALLER.get()
    if principal is not LOCAL and not principal.may_act_as(hello.name):
        raise PermissionDenied(
            f"the credentials of {principal.name!r} may open a link only as agent "
            f"{principal.agent!r}, not as {hello.name!r}",
            reason="AGENT_IDENTITY_MISMATCH",
            agent=hello.name,
        )
