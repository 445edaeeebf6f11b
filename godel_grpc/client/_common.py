"""What the client's service namespaces share: default deadline, paging, reconnect
backoff, and `struct` for payloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2

DEFAULT_TIMEOUT = 30.0
"""Seconds every unary call may take unless the caller says otherwise."""

RECONNECT_FOR = 60.0
"""Seconds a resuming stream keeps trying to reach a coordinator before giving up."""


class Backoff:
    """Waits between reconnects: 0.1 s doubling to 2 s, for at most `limit` seconds
    since the last success."""

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        self._delay = 0.1
        self._since = time.monotonic()

    async def wait(self) -> bool:
        """Sleeps before the next attempt; False once the time is up."""
        if time.monotonic() - self._since >= self._limit:
            return False
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 2.0)
        return True


async def every_page(fetch: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
    """Every item of a paged List RPC: `fetch(token)` makes one call, `field` names the
    response's repeated field."""
    items: list[Any] = []
    token = ""
    while True:
        response = await fetch(token)
        items.extend(getattr(response, field))
        token = response.next_page_token
        if not token:
            return items


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A protobuf Struct from a JSON-like mapping."""
    message = struct_pb2.Struct()
    message.update(dict(values))
    return message
