"""Principals, scopes, and which scope each kind of RPC needs.

Pure policy: no grpc, no I/O. The interceptor asks `required_scope` for an RPC's
`(godel.v1.kind)` option and `Principal.allows` for the caller; the spawn path asks
`spawn_scopes` which scopes a spawned agent's credentials get.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN = "admin"
"""Everything: every command, query and agent link."""
WRITE = "write"
"""Commands: RPCs that append events."""
READ = "read"
"""Queries: RPCs that read a projection."""
AGENT = "agent"
"""Opening the agent link, as the one agent the credentials are bound to."""

SCOPES = (ADMIN, WRITE, READ, AGENT)

# Values of godel.v1.MethodKind (options.proto); repeated here so this module stays
# free of generated code.
KIND_COMMAND = 1
KIND_QUERY = 2
KIND_AGENT_LINK = 3

_SCOPE_OF_KIND = {KIND_COMMAND: WRITE, KIND_QUERY: READ, KIND_AGENT_LINK: AGENT}


def required_scope(kind: int) -> str | None:
    """The scope an RPC of this kind needs; None for an RPC without a kind, which no
    principal may call (fail closed)."""
    return _SCOPE_OF_KIND.get(kind)


def parse_scopes(text: str) -> frozenset[str]:
    """Scopes from ``read,write``; raises ValueError naming an unknown one."""
    scopes = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"give at least one scope of {', '.join(SCOPES)}")
    return scopes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as far as authorization cares.

    Attributes:
        id: the token id (``local`` when authentication is off); rate limits key on it.
        name: a readable name for logs and error messages.
        scopes: what the principal may do.
        agent: for credentials with the ``agent`` scope, the one agent name they may
            open a link as; empty otherwise.
    """

    id: str
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    agent: str = ""

    def allows(self, scope: str) -> bool:
        """Whether the principal holds `scope` (``admin`` holds all of them)."""
        return ADMIN in self.scopes or scope in self.scopes

    def may_act_as(self, agent_name: str) -> bool:
        """Whether the principal may open an agent link under `agent_name`: an admin
        as anyone, an agent principal only as the agent it is bound to."""
        if ADMIN in self.scopes:
            return True
        return AGENT in self.scopes and bool(self.agent) and agent_name == self.agent


LOCAL = Principal("local", "local", frozenset({ADMIN}))
"""The principal of every call when authentication is off (loopback, local use)."""


def spawn_scopes(
    purpose: str, models: tuple[bool, bool] | None
) -> tuple[frozenset[str], str | None]:
    """The scopes a spawned agent's credentials get, from its spawn options.

    Args:
        purpose: ``command``, ``query`` or empty (both sides).
        models: ``(write, read)`` when the spawn gave `models`, else None.

    Returns:
        The scopes (always with ``agent``, so it can open its own link), and a
        problem when `purpose` and `models` contradict each other (a query agent with
        write access, a command agent without it), else None.
    """
    by_purpose = {"command": (True, False), "query": (False, True), "": (True, True)}
    wanted = by_purpose.get(purpose, (True, True))
    if models is not None:
        write, read = models
        if purpose == "command" and not write:
            return frozenset(), "a command agent needs models.write"
        if purpose == "query" and write:
            return frozenset(), "a query agent cannot have models.write"
        wanted = (write, read)
    scopes = {AGENT}
    if wanted[0]:
        scopes.add(WRITE)
    if wanted[1]:
        scopes.add(READ)
    return frozenset(scopes), None
