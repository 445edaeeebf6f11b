"""The PostgreSQL event store: one writer connection, group commit, pooled readers.

Every `append` puts ``(events, future)`` on a queue; one writer task takes everything
queued at that moment and writes it in ONE transaction, so under load batches grow by
themselves while a commit is in flight and the cost of the commit's WAL flush is
shared. A batch of events is one statement (every row passed as column arrays, with
the NOTIFY in the same statement), committed on its own: one round trip and one flush.
Positions are assigned by the writer (last + 1), so they are gap-free and in commit
order: there is only ever one writer.

That "only one writer" is enforced, not assumed. The writer's connection takes a
session-level advisory lock (`pg_advisory_lock`) on a key derived from the database and
schema before anything is read or written. A second store (a standby coordinator)
opened against the same tables waits on that lock, and gets it when the first one's
connection ends, whatever the reason. If the writer's connection is lost, the lock may
already belong to someone else, so the store fails every later append instead of
reconnecting: the coordinator stops, and the standby carries on from the log.

Version checks happen in Python before anything is written, exactly as in the SQLite
store: the writer knows every stream's version (a bounded cache backed by one
``MAX(stream_version)`` query per batch for streams it has not seen), and a call whose
`expected_version` does not match is failed on its own and left out of the transaction.

`wait_for_position` is fed two ways: the writer wakes local waiters as soon as its
commit returns, and every commit also sends ``NOTIFY`` with the new last position,
which the store LISTENs to on its own connection, so a store instance whose log is
written by another process (a standby that took over, a reader) learns of new events
without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from godel_grpc.store.base import EventStore, LogProgress, NewEvent, StoreClosed, StoredEvent
from godel_grpc.store.staging import Queued, SnapshotWrite, VersionCache, read_query, stage
from godel_grpc.store.urls import redact

log = logging.getLogger(__name__)

EVENTS_TABLE: Final = "godel_events"
SNAPSHOTS_TABLE: Final = "godel_snapshots"
NOTIFY_CHANNEL: Final = "godel_events"

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    position BIGINT PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    type TEXT NOT NULL,
    agent_id TEXT NOT NULL DEFAULT '',
    recorded_at DOUBLE PRECISION NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (stream, stream_version)
);
CREATE INDEX IF NOT EXISTS {EVENTS_TABLE}_by_agent
    ON {EVENTS_TABLE} (agent_id, position) WHERE agent_id <> '';
CREATE TABLE IF NOT EXISTS {SNAPSHOTS_TABLE} (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    data BYTEA NOT NULL
);
"""
# Column order matches StoredEvent's fields, so a row tuple maps with StoredEvent(*row).
_COLUMNS: Final = (
    "position",
    "stream",
    "stream_version",
    "type",
    "data",
    "agent_id",
    "recorded_at",
)
_INSERT_EVENTS: Final = (
    f"WITH written AS (INSERT INTO {EVENTS_TABLE} ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], "
    "$5::bytea[], $6::text[], $7::float8[])) "
    "SELECT pg_notify($8, $9)"
)
"""Writes a batch's rows, given as one array per column, and announces the new last
position; a data-modifying WITH always runs to completion, and NOTIFY is delivered only
if the statement commits."""
_SELECT_EVENTS: Final = f"SELECT {', '.join(_COLUMNS)} FROM {EVENTS_TABLE}"
_UPSERT_SNAPSHOT: Final = (
    f"INSERT INTO {SNAPSHOTS_TABLE} (name, position, data) VALUES ($1, $2, $3) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, data = excluded.data"
)
_LAST_POSITION: Final = f"SELECT COALESCE(MAX(position), 0) FROM {EVENTS_TABLE}"
_STREAM_VERSIONS: Final = (
    f"SELECT stream, MAX(stream_version) FROM {EVENTS_TABLE} "
    "WHERE stream = ANY($1::text[]) GROUP BY stream"
)

DEFAULT_VERSION_CACHE_SIZE: Final = 200_000
"""How many stream versions the writer remembers before asking the database again."""

IDLE_PROBE_SECONDS: Final = 5.0
"""After this long without writes the writer checks its connection, so a coordinator
that lost the lock while idle finds out (and stops) without waiting for an append."""

PROBE_TIMEOUT_SECONDS: Final = 10.0
"""How long the idle check may take before the connection counts as lost."""

READ_POOL_SIZE: Final = 4
"""Connections for reads; the writer and the listener have their own."""

_NEW, _OPEN, _CLOSED = 0, 1, 2
_STOP: Final = object()
"""Queued by `close` after the last accepted append: the writer exits when it sees it."""

_CONNECTION_ERRORS: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
)


class StoreConnectionLost(Exception):
    """The writer's connection (and with it the advisory lock) is gone; the store is
    unusable because another coordinator may already be writing."""


def lock_key(database: str, schema: str) -> int:
    """The advisory lock key guarding one event log: stable across processes and
    versions, distinct per database and schema."""
    digest = hashlib.sha256(f"godel-grpc/event-log/{database}/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresEventStore(EventStore):
    """An `EventStore` in two tables of a PostgreSQL database.

    Must be opened, used and closed on one event loop. `open` waits for the advisory
    lock, so a second store on the same database stays in `open` until the first one
    is closed or its connection dies. Cancelling an `append` stops the wait, not the
    write: an append already queued is still committed.
    """

    def __init__(self, url: str, *, version_cache_size: int = DEFAULT_VERSION_CACHE_SIZE) -> None:
        self._url = url
        self._state = _NEW
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._wconn: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._broken: BaseException | None = None
        self._lost: asyncio.Future[BaseException] | None = None
        self._w_last = 0  # last position the writer assigned and committed
        self._progress = LogProgress()  # the last commit known to this instance
        self._versions = VersionCache(version_cache_size)
        self.lock_key: int | None = None

    @property
    def url(self) -> str:
        """The database URL, as given."""
        return self._url

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connects, takes the advisory lock (waiting while another store holds it),
        creates the schema if needed, and starts the writer."""
        if self._state == _OPEN:
            return
        if self._state == _CLOSED:
            raise RuntimeError("an event store cannot be reopened after close")
        self._lost = asyncio.get_running_loop().create_future()
        conn: asyncpg.Connection = await asyncpg.connect(self._url)
        try:
            database, schema = await conn.fetchrow("SELECT current_database(), current_schema()")
            self.lock_key = lock_key(database, schema)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                log.warning(
                    "standby",
                    extra={
                        "store": redact(self._url),
                        "reason": "another coordinator holds the event log's lock; waiting",
                    },
                )
                await conn.execute("SELECT pg_advisory_lock($1)", self.lock_key)
                log.warning("lock acquired", extra={"store": redact(self._url)})
            if await conn.fetchval("SHOW synchronous_commit") == "off":
                # An append returns only once durable; a stronger setting is kept.
                await conn.execute("SET synchronous_commit TO on")
            # Under the lock: no one else is creating the schema or writing.
            await conn.execute(_SCHEMA)
            self._w_last = int(await conn.fetchval(_LAST_POSITION))
            self._progress.advance(self._w_last)
            self._listener = await asyncpg.connect(self._url)
            await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=READ_POOL_SIZE)
        except BaseException:
            for opened in (self._listener, conn):
                if opened is not None:
                    await self._close_quietly(opened)
            self._listener = None
            raise
        self._wconn = conn
        conn.add_termination_listener(self._on_writer_lost)
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="godel-pg-writer")
        self._state = _OPEN

    async def close(self) -> None:
        """Commits everything already queued, stops the writer, closes every connection
        (which releases the lock). Concurrent and repeated calls wait for the same end."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        was_open = self._state == _OPEN
        self._state = _CLOSED
        if was_open and self._writer is not None:
            self._queue.put_nowait(_STOP)  # every accepted append is ahead of it
            await self._writer
        if self._listener is not None:
            await self._close_quietly(self._listener)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
        if self._wconn is not None:
            await self._close_quietly(self._wconn)
        self._progress.close()

    @staticmethod
    async def _close_quietly(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except Exception:
            conn.terminate()

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise StoreClosed("the event store is closed")
            raise RuntimeError("the event store is not open; call open() first")
        if self._broken is not None:
            raise StoreConnectionLost(str(self._broken)) from self._broken

    def failure(self) -> asyncio.Future[BaseException] | None:
        """Resolves if the writer's connection, and with it the log's lock, is lost."""
        return self._lost

    def _on_writer_lost(self, _conn: object) -> None:
        if self._state == _OPEN:
            self._mark_lost(
                StoreConnectionLost("the connection holding the event log's lock ended")
            )

    def _mark_lost(self, error: BaseException) -> None:
        """From now on every append fails: the lock went with the connection, and another
        coordinator may already own the log."""
        if self._broken is not None:
            return
        self._broken = error
        log.error("event store connection lost", extra={"error": str(error)})
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(error)

    # --- writes ----------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Queues `events` for the writer's next commit and waits for that commit.

        Each event's `expected_version` is compared with its stream's version just
        before that event, counting earlier events of the same call.
        """
        self._check_open()
        if not events:
            return []
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, future, True))
        return await future

    async def write(self, events: Sequence[NewEvent]) -> None:
        """Appends like `append` but resolves without building `StoredEvent`s."""
        self._check_open()
        if not events:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, future, False))
        await future

    async def save_snapshot(self, name: str, position: int, data: bytes) -> None:
        """Upserts the snapshot through the writer, so it is committed like an append."""
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((SnapshotWrite(name, position, data), future, False))
        await future

    async def _run(self) -> None:
        """The writer: drain the queue, commit the lot, resolve the callers, repeat."""
        queue = self._queue
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(IDLE_PROBE_SECONDS):  # no task per batch
                        first = await queue.get()
                except TimeoutError:
                    await self._probe()
                    continue
            else:
                first = queue.get_nowait()
            batch = [first]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = next((i for i, item in enumerate(batch) if item is _STOP), -1)
            await self._commit_safely(batch if stop < 0 else batch[:stop])
            if stop >= 0:
                closed = StoreClosed("the event store is closed")
                for _, future, _ in batch[stop + 1 :]:
                    _fail(future, closed)
                return

    async def _probe(self) -> None:
        """Checks the idle writer connection with a trivial query."""
        if self._broken is not None or self._wconn is None:
            return
        try:
            await asyncio.wait_for(self._wconn.fetchval("SELECT 1"), PROBE_TIMEOUT_SECONDS)
        except Exception as error:  # SELECT 1 failing means the session is unusable
            self._mark_lost(StoreConnectionLost(f"lost the event log's connection: {error}"))

    async def _commit_safely(self, batch: list[Queued]) -> None:
        """Commits `batch`; whatever goes wrong fails its callers instead of hanging them."""
        if not batch:
            return
        if self._broken is not None:
            for _, future, _ in batch:
                _fail(future, StoreConnectionLost(str(self._broken)))
            return
        try:
            await self._commit(batch)
        except _CONNECTION_ERRORS as error:
            # The lock went with the connection: never write again from this instance.
            lost = StoreConnectionLost(f"lost the event log's connection: {error}")
            self._mark_lost(lost)
            for _, future, _ in batch:
                _fail(future, lost)
        except Exception as error:
            if self._wconn is None or self._wconn.is_closed():
                # For example the server ended the session (admin shutdown).
                self._mark_lost(StoreConnectionLost(f"lost the event log's connection: {error}"))
            else:
                await self._recover()
            for _, future, _ in batch:
                _fail(future, error)

    async def _commit(self, batch: list[Queued]) -> None:
        """Writes every acceptable call of `batch` in one transaction, then resolves."""
        conn = self._wconn
        assert conn is not None
        await self._load_versions(conn, batch)
        staged = stage(batch, self._w_last, self._cached_version, time.time())
        rows, snapshots = staged.rows, staged.snapshots
        if rows or snapshots:
            position = staged.last_position
            columns = [list(column) for column in zip(*rows, strict=True)] if rows else []
            if not snapshots:  # one statement commits on its own
                await conn.execute(_INSERT_EVENTS, *columns, NOTIFY_CHANNEL, str(position))
            else:
                async with conn.transaction():
                    if rows:
                        await conn.execute(_INSERT_EVENTS, *columns, NOTIFY_CHANNEL, str(position))
                    await conn.executemany(_UPSERT_SNAPSHOT, snapshots)
            self._w_last = position
            self._versions.remember(staged.versions)
            self._progress.advance(position)
        built: list[StoredEvent] | None = None
        for future, span, failure in staged.outcomes:
            if future.done():  # the caller was cancelled
                continue
            if failure is not None:
                future.set_exception(failure)
            elif span is None:
                future.set_result(None)
            else:
                if built is None:
                    built = [StoredEvent(*row) for row in rows]
                future.set_result(built[span[0] : span[1]])

    def _cached_version(self, stream: str) -> int:
        # `_load_versions` has put every stream of the batch in the cache.
        return self._versions.get(stream) or 0

    async def _load_versions(self, conn: asyncpg.Connection, batch: list[Queued]) -> None:
        """Caches, in one query, the committed version of every stream in `batch` that
        the cache lacks (streams hinted as new start at 0 without asking; were the hint
        wrong, the unique (stream, version) index fails the commit)."""
        unknown = {
            event.stream
            for work, _, _ in batch
            if not isinstance(work, SnapshotWrite)
            for event in work
            if not event.new_stream and event.stream not in self._versions
        }
        if unknown:
            found = dict(await conn.fetch(_STREAM_VERSIONS, list(unknown)))
            for stream in unknown:
                self._versions.load(stream, int(found.get(stream) or 0))

    async def _recover(self) -> None:
        """After a failed transaction, forgets cached state and rereads it."""
        self._versions.clear()
        assert self._wconn is not None
        with contextlib.suppress(Exception):
            self._w_last = int(await self._wconn.fetchval(_LAST_POSITION))
            self._progress.advance(self._w_last)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A commit (ours or another process's) announced its last position."""
        with contextlib.suppress(ValueError):
            self._progress.advance(int(payload))

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
        """Runs one indexed SELECT on a pooled connection."""
        self._check_open()
        if limit <= 0:
            return []
        sql, params = read_query(
            _SELECT_EVENTS,
            lambda number: f"${number}",
            after,
            limit,
            stream=stream,
            agent_id=agent_id,
            types=types,
            up_to=up_to,
        )
        assert self._pool is not None
        rows = await self._pool.fetch(sql, *params)
        return [StoredEvent(*row) for row in rows]

    async def last_position(self) -> int:
        """The last position this instance knows to be committed; no I/O."""
        return self._progress.position

    async def wait_for_position(self, after: int, timeout: float | None = None) -> int:
        """Sleeps until a commit announces a position past `after`, the store closes,
        or `timeout` passes; nothing polls."""
        return await self._progress.wait_past(after, timeout)

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        """Reads the snapshot on a pooled connection."""
        self._check_open()
        assert self._pool is not None
        row = await self._pool.fetchrow(
            f"SELECT position, data FROM {SNAPSHOTS_TABLE} WHERE name = $1", name
        )
        return (int(row[0]), bytes(row[1])) if row is not None else None


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
