"""Credentials the coordinator mints for the agents it spawns.

A spawned agent gets its own token, bound to its name, with the ``agent`` scope (to
open its own link) plus ``write`` and/or ``read`` as its spawn options ask (`purpose`,
`models`). The runtime hands it over in the agent's environment (GODEL_TOKEN), where
the agent's own task commands find it too: a query agent can read the coordinator's
state, and is refused when it tries to change it. The token lives in the same token
file as the others (so `godel token list` shows it and `godel token revoke` can cut it
off) and is revoked when the agent is terminated; a day later the next mint drops it
from the file (`tokens.SPAWNED_REVOKED_KEPT`).
"""

from __future__ import annotations

import asyncio
import contextlib

from godel_grpc.auth.tokens import TokenFile


class AgentCredentials:
    """Mints and revokes spawned agents' tokens in a token file."""

    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens

    async def mint(self, agent_id: str, agent_name: str, scopes: frozenset[str]) -> str:
        """A new token for the agent; the file write runs off the event loop."""
        _record, token = await asyncio.to_thread(
            self._tokens.create,
            scopes,
            name=_token_name(agent_id),
            agent=agent_name,
            spawned=True,
        )
        return token

    async def revoke(self, agent_id: str) -> None:
        """Revokes the agent's token; nothing to do if it has none or it is revoked."""
        with contextlib.suppress(KeyError):
            await asyncio.to_thread(self._tokens.revoke, _token_name(agent_id))


def _token_name(agent_id: str) -> str:
    return f"agent/{agent_id}"
