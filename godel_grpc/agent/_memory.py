"""The agent's reflex memory: a small key/value store its handlers read and write.

Reads are local (a handler may read often); every write also goes to the coordinator
over the link, which keeps it (in the event log when the agent's reflex memory is
"persistent", only for the link's life when it is "session"). On every welcome the
coordinator hands back what it holds; the agent starts from that and lays its own writes
that have not gone out yet on top, so a write made while the link was down is not lost.

Limits (from `patterns/reflex.py`): keys of 1 to 128 characters, values of at most
16 KiB as JSON, at most 256 keys and 1 MiB in all. A write that breaks one raises
`MemoryLimitError` at once, in the handler that made it.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from godel_grpc.patterns.reflex import (
    MemoryLimitError,
    check_memory_write,
    encoded,
    encoded_size,
)

Write = tuple[str, Any, bool]
"""(key, value, deleted) as handed to the link."""


class Memory:
    """Key/value memory shared by the agent's handlers (``ctx.memory``).

    Thread-safe: sync handlers run in threads of their own. Values are JSON values;
    `get` returns a copy, so changing it does not change the memory until `set`.

    Example::

        seen = ctx.memory.get("seen", 0)
        ctx.memory.set("seen", seen + 1)
    """

    def __init__(self, send: Callable[[Write], None] | None = None) -> None:
        """Args:
        send: takes each write for the link (called from any thread); None keeps the
            memory local, which is what a handler test needs.
        """
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._send = send
        # Writes handed to `send` that the link has not confirmed queuing yet (a sync
        # handler's thread hands them over through the loop): a welcome arriving in
        # between must not forget them.
        self._unconfirmed: dict[str, Write] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when it is not set."""
        with self._lock:
            if key not in self._values:
                return default
            return copy.deepcopy(self._values[key])

    def set(self, key: str, value: Any) -> None:
        """Sets `key` to a JSON value and sends the write to the coordinator.

        Raises:
            MemoryLimitError: the value is not JSON, or a limit would be broken.
        """
        text = encoded(value)
        size = len(text.encode())
        plain = json.loads(text)  # a copy with tuples as lists, as the wire carries it
        write: Write = (key, plain, False)
        with self._lock:
            check_memory_write(self._sizes, key, size)
            self._values[key] = plain
            self._sizes[key] = size
            if self._send is not None:
                self._unconfirmed[key] = write
        if self._send is not None:
            self._send(write)

    def delete(self, key: str) -> None:
        """Removes `key` (nothing happens if it is not set) and tells the coordinator."""
        write: Write = (key, None, True)
        with self._lock:
            check_memory_write(self._sizes, key, None)
            self._values.pop(key, None)
            self._sizes.pop(key, None)
            if self._send is not None:
                self._unconfirmed[key] = write
        if self._send is not None:
            self._send(write)

    def confirm(self, write: Write) -> None:
        """The link has queued `write`; from now on the outbox accounts for it."""
        with self._lock:
            if self._unconfirmed.get(write[0]) is write:
                del self._unconfirmed[write[0]]

    def keys(self) -> list[str]:
        """The keys set, in the order they were first set."""
        with self._lock:
            return list(self._values)

    def as_dict(self) -> dict[str, Any]:
        """A copy of the whole memory."""
        with self._lock:
            return copy.deepcopy(self._values)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def reset(self, held: Mapping[str, Any], unsent: Mapping[str, Write]) -> None:
        """Starts over from what the coordinator holds, with the writes not sent yet
        (`unsent`, then those still on their way to the link) laid on top (called on
        each welcome)."""
        with self._lock:
            values = dict(held)
            for key, value, deleted in [*unsent.values(), *self._unconfirmed.values()]:
                if deleted:
                    values.pop(key, None)
                else:
                    values[key] = value
            self._values = values
            self._sizes = {k: encoded_size(v) for k, v in values.items()}


__all__ = ["Memory", "MemoryLimitError", "Write"]
