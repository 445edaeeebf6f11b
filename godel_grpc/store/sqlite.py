"""The SQLite event store: one writer thread, group commit, WAL readers.

Durability costs one fsync per commit, so throughput comes from sharing commits. Every
`append` puts ``(events, future)`` on a queue; a single writer thread takes everything
queued at that moment, writes it with a few multi-row INSERTs in ONE transaction with
ONE commit (``synchronous=FULL``), and resolves all the callers' futures with a single
``call_soon_threadsafe``. Under load, batches grow by themselves while a commit is in
flight. The writer only makes row tuples; the event loop turns them into `StoredEvent`s
while the writer sits in COMMIT's fsync (which releases the GIL), so the two overlap.

Why multi-row INSERTs and not ``executemany``: the sqlite3 module lets go of the GIL
around every statement step, and ``executemany`` steps once per row. Each step must then
win the GIL back from the thread that holds it, which may keep it for the interpreter's
switch interval (5 ms): with another thread busy in Python, 6,000 rows took about 11 s
through ``executemany`` and 55 ms through statements of 512 rows (measured here). The
event loop is that other thread whenever the coordinator is busy.

Version checks and positions are `staging.stage`'s: the writer owns the only write
connection, so it knows every stream's version (a bounded cache backed by
``MAX(stream_version)``), and a call whose `expected_version` does not match is failed on
its own and left out of the transaction.

Reads use read-only connections from a small pool, in worker threads; WAL lets them run
while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import pathlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from godel_grpc.store.base import EventStore, LogProgress, NewEvent, StoreClosed, StoredEvent
from godel_grpc.store.staging import (
    Outcome,
    Queued,
    Row,
    SnapshotWrite,
    VersionCache,
    read_query,
    stage,
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    type TEXT NOT NULL,
    agent_id TEXT NOT NULL DEFAULT '',
    recorded_at REAL NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (stream, stream_version)
);
CREATE INDEX IF NOT EXISTS events_by_agent ON events (agent_id, position) WHERE agent_id != '';
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""
# Column order matches StoredEvent's fields, so a row tuple maps with StoredEvent(*row).
_INSERT_EVENTS: Final = (
    "INSERT INTO events (position, stream, stream_version, type, data, agent_id, recorded_at) "
    "VALUES "
)
_ROW_PLACEHOLDERS: Final = "(?, ?, ?, ?, ?, ?, ?)"
_COLUMNS: Final = 7
_ROWS_PER_INSERT: Final = 512
"""Rows one INSERT carries at most: 3,584 parameters, within SQLite's default limit
(32,766 since 3.32; `_rows_per_insert` lowers it for an older library)."""
_EXACT_INSERT: Final = 16
"""A remainder of up to this many rows goes out in one statement of its own size; a
larger one in statements of 64, 32 or 16 rows first. Each shape is a prepared statement
the connection keeps, about 0.65 KiB per row: the shapes 1 to 16, 32 and 64 take 173 KiB
where every size from 1 to 64 took 1.5 MiB (measured here with sqlite3_memory_used). A
commit pays at most two statements more for it."""
_UPSERT_SNAPSHOT: Final = (
    "INSERT INTO snapshots (name, position, data) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, data = excluded.data"
)
_SELECT_EVENTS: Final = (
    "SELECT position, stream, stream_version, type, data, agent_id, recorded_at FROM events"
)

DEFAULT_VERSION_CACHE_SIZE: Final = 200_000
"""How many stream versions the writer remembers before asking the database again."""

_PREBUILD_MIN_ROWS: Final = 32
"""Below this, waking the loop early to build results costs more than it overlaps."""

_NEW, _OPEN, _CLOSED = 0, 1, 2
_STOP: Final = object()
"""Queued by `close` after the last accepted append: the writer exits when it sees it."""


@functools.lru_cache(maxsize=_EXACT_INSERT + 4)
def _insert_statement(rows: int) -> str:
    """The INSERT of `rows` events."""
    return _INSERT_EVENTS + ", ".join([_ROW_PLACEHOLDERS] * rows)


class _Built:
    """A batch's `StoredEvent`s, made once, on the loop thread, from the writer's rows."""

    __slots__ = ("_events", "_rows")

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows
        self._events: list[StoredEvent] | None = None

    def build(self) -> list[StoredEvent]:
        if self._events is None:
            self._events = [StoredEvent(*row) for row in self._rows]
        return self._events


class SqliteEventStore(EventStore):
    """An `EventStore` in one SQLite file (plus its ``-wal`` and ``-shm`` companions).

    Must be opened, used and closed on one event loop. Appends are accepted from that
    loop only. Cancelling an `append` stops the wait, not the write: an append already
    queued is still committed.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, version_cache_size: int = DEFAULT_VERSION_CACHE_SIZE
    ) -> None:
        self._path = pathlib.Path(path)
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._close_task: asyncio.Task[None] | None = None
        # Loop side: the last position whose commit has been reported to the loop.
        self._progress = LogProgress()
        # Writer side, touched only by the writer thread once it runs.
        self._wconn: sqlite3.Connection | None = None
        self._w_last = 0
        self._versions = VersionCache(version_cache_size)
        self._rows_per_insert = _ROWS_PER_INSERT
        # Idle read-only connections; the lock makes "return to pool" and "close all" exclusive.
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._readers_closed = False
        self._read_uri = ""

    @property
    def path(self) -> pathlib.Path:
        """The database file."""
        return self._path

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Creates the file and schema if needed, then starts the writer thread."""
        if self._state == _OPEN:
            return
        if self._state == _CLOSED:
            raise RuntimeError("an event store cannot be reopened after close")
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open_sync)
        self._progress.advance(self._w_last)
        self._thread = threading.Thread(target=self._run, name="godel-store-writer", daemon=True)
        self._thread.start()
        self._state = _OPEN

    def _open_sync(self) -> None:
        """Prepares the write connection (handed to the writer thread) and the reader URI."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self._path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
            self._w_last = int(row[0])
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._rows_per_insert = min(
            _ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS
        )
        self._read_uri = self._path.resolve().as_uri() + "?mode=ro"

    async def close(self) -> None:
        """Commits everything already queued, stops the writer, closes every connection.

        Concurrent and repeated calls all wait for the same shutdown.
        """
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        was_open = self._state == _OPEN
        self._state = _CLOSED
        if was_open and self._thread is not None:
            # Every append accepted so far is ahead of _STOP in the queue.
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        with self._readers_lock:
            self._readers_closed = True
            idle, self._readers = self._readers, []
        for conn in idle:
            conn.close()
        self._progress.close()

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise StoreClosed("the event store is closed")
            raise RuntimeError("the event store is not open; call open() first")

    # --- writes ----------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Queues `events` for the writer's next commit and waits for that commit.

        Each event's `expected_version` is compared with its stream's version just
        before that event, counting earlier events of the same call.
        """
        self._check_open()
        if not events:
            return []
        assert self._loop is not None
        future: asyncio.Future[list[StoredEvent]] = self._loop.create_future()
        self._queue.put((events, future, True))
        return await future

    async def write(self, events: Sequence[NewEvent]) -> None:
        """Appends like `append` but resolves without building `StoredEvent`s."""
        self._check_open()
        if not events:
            return
        assert self._loop is not None
        future: asyncio.Future[list[StoredEvent]] = self._loop.create_future()
        self._queue.put((events, future, False))
        await future

    async def save_snapshot(self, name: str, position: int, data: bytes) -> None:
        """Upserts the snapshot through the writer, so it is committed like an append."""
        self._check_open()
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((SnapshotWrite(name, position, data), future, False))
        await future

    def _run(self) -> None:
        """The writer thread: drain the queue, commit the lot, report, repeat."""
        take, take_nowait = self._queue.get, self._queue.get_nowait
        try:
            while True:
                batch = [take()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(take_nowait())
                stop = next((i for i, item in enumerate(batch) if item is _STOP), -1)
                if stop < 0:
                    self._commit_safely(batch)
                    continue
                self._commit_safely(batch[:stop])
                # Nothing should follow _STOP (close refuses new work first); fail it if it does.
                closed = StoreClosed("the event store is closed")
                self._report([(item[1], None, closed) for item in batch[stop + 1 :]])
                return
        finally:
            if self._wconn is not None:
                self._wconn.close()

    def _commit_safely(self, batch: list[Queued]) -> None:
        """Commits `batch`; a bug in the writer fails the batch instead of hanging its callers."""
        try:
            self._commit(batch)
        except Exception as error:
            assert self._wconn is not None
            self._recover(self._wconn)
            self._report([(future, None, error) for _, future, _ in batch])

    def _commit(self, batch: list[Queued]) -> None:
        """Writes every acceptable call of `batch` in one transaction and reports outcomes.

        Rows are plain tuples in `StoredEvent` field order; the loop thread turns them
        into `StoredEvent`s while this thread waits in COMMIT (which releases the GIL).
        """
        if not batch:
            return
        conn = self._wconn
        assert conn is not None
        staged = stage(batch, self._w_last, self._committed_version, time.time())
        rows, snapshots, outcomes = staged.rows, staged.snapshots, staged.outcomes
        built = _Built(rows)
        if rows or snapshots:
            try:
                conn.execute("BEGIN")
                if rows:
                    self._insert(conn, rows)
                    if staged.wanted and len(rows) >= _PREBUILD_MIN_ROWS:
                        # COMMIT waits on fsync without the GIL: the loop builds the results.
                        self._call_loop(built.build)
                if snapshots:
                    conn.executemany(_UPSERT_SNAPSHOT, snapshots)
                conn.execute("COMMIT")
            except Exception as error:
                self._recover(conn)
                self._report([(f, None, e if e is not None else error) for f, _, e in outcomes])
                return
            self._w_last = staged.last_position
            self._versions.remember(staged.versions)
        self._report(outcomes, built)

    def _insert(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        """Inserts `rows` with as few statements as the statement shapes allow (see the
        module docstring for why not ``executemany``)."""
        full = self._rows_per_insert
        index, total = 0, len(rows)
        while index < total:
            left = total - index
            if left >= full:
                size = full
            elif left <= _EXACT_INSERT:
                size = left
            else:  # 16, 32 or 64: the largest power of two that fits, at most 64
                size = min(64, 1 << (left.bit_length() - 1))
            chunk = rows[index : index + size]
            conn.execute(_insert_statement(size), list(itertools.chain.from_iterable(chunk)))
            index += size

    def _committed_version(self, stream: str) -> int:
        """A stream's committed version: remembered, or read from disk and remembered."""
        version = self._versions.get(stream)
        if version is None:
            assert self._wconn is not None
            row = self._wconn.execute(
                "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
            version = int(row[0])
            self._versions.load(stream, version)
        return version

    def _recover(self, conn: sqlite3.Connection) -> None:
        """After a failed transaction, forgets cached state and rereads it from disk.

        A failed COMMIT may or may not have reached the disk, so nothing is assumed.
        """
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        self._versions.clear()
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
            self._w_last = int(row[0])

    def _call_loop(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        # The loop may already be gone if the store was never closed; nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _report(self, outcomes: list[Outcome], built: _Built | None = None) -> None:
        """Hands a batch's outcomes to the event loop in one thread-safe call."""
        if outcomes:
            self._call_loop(self._deliver, outcomes, built, self._w_last)

    def _deliver(self, outcomes: list[Outcome], built: _Built | None, last: int) -> None:
        """On the loop: publish the new last position, then resolve the callers."""
        self._progress.advance(last)
        for future, span, error in outcomes:
            if future.done():  # the caller was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            elif span is None or built is None:
                future.set_result(None)
            else:
                future.set_result(built.build()[span[0] : span[1]])

    # --- reads -----------------------------------------------------------------------

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        *,
        stream: str | None = None,
        agent_id: str | None = None,
        types: Sequence[str] = (),
        up_to: int | None = None,
    ) -> list[StoredEvent]:
        """Runs one indexed SELECT on a pooled read-only connection in a worker thread."""
        self._check_open()
        if limit <= 0:
            return []
        sql, params = read_query(
            _SELECT_EVENTS,
            lambda _: "?",
            after,
            limit,
            stream=stream,
            agent_id=agent_id,
            types=types,
            up_to=up_to,
        )
        rows = await asyncio.to_thread(self._query, sql, params)
        return [StoredEvent(*row) for row in rows]

    async def last_position(self) -> int:
        """The last position the writer reported as committed; no I/O."""
        return self._progress.position

    async def wait_for_position(self, after: int, timeout: float | None = None) -> int:
        """Sleeps until a commit reports a position past `after`, the store closes, or
        `timeout` passes; each commit wakes the waiters once, nothing polls."""
        return await self._progress.wait_past(after, timeout)

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        """Reads the snapshot on a pooled read-only connection."""
        self._check_open()
        rows = await asyncio.to_thread(
            self._query, "SELECT position, data FROM snapshots WHERE name = ?", [name]
        )
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Runs in a worker thread; fetches everything so no read transaction lingers."""
        with self._readers_lock:
            if self._readers_closed:
                raise StoreClosed("the event store is closed")
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = sqlite3.connect(
                self._read_uri, uri=True, isolation_level=None, check_same_thread=False
            )
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            with self._readers_lock:
                if not self._readers_closed:
                    self._readers.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
