"""What the SQL backends' single writers share: turning queued calls into one transaction.

Each writer owns the only write connection to its log, so it knows every stream's
version and checks `expected_version` in Python before writing anything: a call whose
versions do not fit fails on its own and is simply left out of the transaction, and the
calls that share the commit are not disturbed. Positions are assigned here too (last + 1,
so the log stays gap-free). Also here: the bounded cache of committed stream versions,
and the SELECT behind `EventStore.read`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from godel_grpc.store.base import ANY_VERSION, NewEvent, WrongExpectedVersion

Row = tuple[int, str, int, str, bytes, str, float]
"""One event row in `StoredEvent` field order, so ``StoredEvent(*row)`` maps it."""

Outcome = tuple[asyncio.Future[Any], tuple[int, int] | None, BaseException | None]
"""For one queued call: its future, the (first, end) slice of the batch's rows it wants
back as stored events (None: it only waits), and its own failure, if any."""


class SnapshotWrite:
    """A snapshot to upsert in the writer's next transaction."""

    __slots__ = ("data", "name", "position")

    def __init__(self, name: str, position: int, data: bytes) -> None:
        self.name = name
        self.position = position
        self.data = data


Queued = tuple[Sequence[NewEvent] | SnapshotWrite, asyncio.Future[Any], bool]
"""A call waiting for the writer: its events (or a snapshot), its future, and whether it
wants the stored events back."""


@dataclass(slots=True)
class Staged:
    """One transaction's worth of queued calls, checked and numbered."""

    last_position: int
    """The position of the last row; unchanged when there are no rows."""
    rows: list[Row] = field(default_factory=list)
    snapshots: list[tuple[str, int, bytes]] = field(default_factory=list)
    """(name, position, data) to upsert."""
    outcomes: list[Outcome] = field(default_factory=list)
    """One per queued call, in queue order."""
    versions: dict[str, int] = field(default_factory=dict)
    """Each stream's version once the transaction commits."""
    wanted: bool = False
    """Whether some caller wants its stored events back."""


def stage(
    batch: Iterable[Queued],
    last_position: int,
    committed_version: Callable[[str], int],
    now: float,
) -> Staged:
    """Checks each call's expected versions and numbers the rows of those that fit.

    Args:
        batch: the queued calls, in order.
        last_position: the log's last committed position.
        committed_version: a stream's committed version, for a stream not yet written
            by this batch and not hinted as new (``NewEvent.new_stream``: version 0).
        now: the commit's time, for every row.
    """
    staged = Staged(last_position)
    rows, outcomes, pending = staged.rows, staged.outcomes, staged.versions
    add_row = rows.append
    position = last_position
    for work, future, want in batch:
        if isinstance(work, SnapshotWrite):
            staged.snapshots.append((work.name, work.position, work.data))
            outcomes.append((future, None, None))
            continue
        versions: dict[str, int] = {}  # this call's, merged only if all of it fits
        first, start = len(rows), position
        try:
            for event in work:
                stream = event.stream
                current = versions.get(stream)
                if current is None:
                    current = pending.get(stream)
                    if current is None:
                        current = 0 if event.new_stream else committed_version(stream)
                expected = event.expected_version
                if expected != ANY_VERSION and expected != current:
                    raise WrongExpectedVersion(stream, expected, current)
                versions[stream] = current = current + 1
                position += 1
                add_row((position, stream, current, event.type, event.data, event.agent_id, now))
        except Exception as error:  # a conflict, or a malformed event: this call only
            position = start
            del rows[first:]
            outcomes.append((future, None, error))
            continue
        pending.update(versions)
        outcomes.append((future, (first, len(rows)) if want else None, None))
        staged.wanted = staged.wanted or want
    staged.last_position = position
    return staged


class VersionCache:
    """Committed stream versions the writer remembers, the least recently written
    forgotten first; a forgotten stream's version is read from the log again."""

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._versions: OrderedDict[str, int] = OrderedDict()

    def get(self, stream: str) -> int | None:
        """The stream's committed version, or None when not remembered."""
        return self._versions.get(stream)

    def __contains__(self, stream: object) -> bool:
        return stream in self._versions

    def __len__(self) -> int:
        return len(self._versions)

    def load(self, stream: str, version: int) -> None:
        """Remembers a version read from the log."""
        self._versions[stream] = version

    def remember(self, committed: dict[str, int]) -> None:
        """Remembers the versions a transaction committed, evicting beyond the size."""
        cache = self._versions
        for stream, version in committed.items():
            cache[stream] = version
            cache.move_to_end(stream)
        while len(cache) > self._size:
            cache.popitem(last=False)

    def clear(self) -> None:
        """Forgets everything (after a failed transaction nothing is assumed)."""
        self._versions.clear()


def read_query(
    select: str,
    placeholder: Callable[[int], str],
    after: int,
    limit: int,
    *,
    stream: str | None,
    agent_id: str | None,
    types: Sequence[str],
    up_to: int | None,
) -> tuple[str, list[Any]]:
    """The SELECT behind `EventStore.read` and its parameters.

    Args:
        select: ``SELECT <columns> FROM <events table>``.
        placeholder: spells the n-th parameter (from 1) in the backend's dialect.
    """
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    clauses = [f"position > {param(after)}"]
    if up_to is not None:
        clauses.append(f"position <= {param(up_to)}")
    if stream is not None:
        clauses.append(f"stream = {param(stream)}")
    if agent_id is not None:
        clauses.append(f"agent_id = {param(agent_id)}")
        if agent_id:
            # The partial index's own condition, so that the planner can use it.
            clauses.append("agent_id != ''")
    if types:
        clauses.append(f"type IN ({', '.join(param(kind) for kind in dict.fromkeys(types))})")
    # Within a stream, version order is position order, and the unique (stream,
    # stream_version) index already holds the rows that way: no sort, early LIMIT.
    order = "stream_version" if stream is not None else "position"
    return f"{select} WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT {param(limit)}", params
