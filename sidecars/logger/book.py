"""The logger's log: what it keeps, in which order, and who is watching it.

Ship streams hand records in here. Records below the configured level are counted and
dropped; the rest get the next sequence number and wait for the one writer task, which
takes whatever has piled up, writes it as one batch in a worker thread and flushes it.
While a batch is being written the next one grows, so batches follow the load without
any timer. Tail reads the files back, then follows: followers wait on a condition the
writer notifies after each batch, never on a timer.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from godel_grpc._proto.godel.v1 import log_record_pb2
from godel_grpc.api.validation import violations
from godel_grpc.errors import Unavailable
from sidecars.logger.filter import LevelFilter, TailFilter
from sidecars.logger.records import decode, encode
from sidecars.logger.writer import RotatingJsonLines

log = logging.getLogger(__name__)

LogRecord = log_record_pb2.LogRecord

RECENT_RECORDS = 10_000
"""Records kept in memory for followers; a follower further behind skips the rest."""
MAX_PENDING = 10_000
"""Records waiting for the writer before Ship stops reading, which pushes back on the
agent through gRPC flow control instead of growing memory."""


@dataclass
class ShipCounts:
    """What happened to the records of one Ship stream (or of all of them)."""

    received: int = 0
    written: int = 0
    filtered: int = 0
    invalid: int = 0

    def add(self, other: ShipCounts) -> None:
        """Adds another stream's counts to these."""
        self.received += other.received
        self.written += other.written
        self.filtered += other.filtered
        self.invalid += other.invalid


class LogBook:
    """Filters, numbers, stores and serves one agent's log records."""

    def __init__(
        self,
        files: RotatingJsonLines,
        *,
        level: str = "debug",
        agent_id: str = "",
        recent: int = RECENT_RECORDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """Sets the book up; `start` must run before records come in.

        Args:
            files: where records are written.
            level: lowest level kept: "debug", "info", "warning" or "error".
            agent_id: stamped on records that arrive without one.
            recent: records kept in memory for followers.
            max_pending: records waiting for the writer before Ship pushes back.

        Raises:
            KeyError: for an unknown level.
        """
        self._files = files
        self._keep = LevelFilter(level)
        self._agent_id = agent_id
        self._pending: list[LogRecord] = []
        self._recent: collections.deque[LogRecord] = collections.deque(maxlen=recent)
        self._max_pending = max_pending
        self._next_sequence = 1
        self._written = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._io = asyncio.Lock()
        """Held while the files are touched, so a Tail never reads half a rotation."""
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.totals = ShipCounts()
        """Counts over every Ship stream since the start."""
        self.lost = 0
        """Records that could not be written (the disk refused them)."""

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record on disk; 0 for an empty log."""
        return self._written

    async def start(self) -> None:
        """Continues the sequence of what is already on disk and starts the writer."""
        self._written = await asyncio.to_thread(self._sequence_on_disk)
        self._next_sequence = self._written + 1
        self._writer = asyncio.create_task(self._write_loop(), name="logger-writer")

    # Ship.

    async def ship(self, records: AsyncIterable[LogRecord | object]) -> ShipCounts:
        """Takes one stream's records and returns once they are on disk.

        Anything but a `LogRecord` stands for a record that did not decode (the
        boundary's `Undecodable`); it counts as invalid, as does a record that breaks
        its field rules.

        Raises:
            Unavailable: when the book is closing; what was received is kept.
        """
        counts = ShipCounts()
        try:
            async for record in self._until_closing(records):
                counts.received += 1
                if not isinstance(record, LogRecord) or violations(record):
                    counts.invalid += 1
                elif not self._keep.keeps(record.level):
                    counts.filtered += 1
                else:
                    await self._room()
                    self._admit(record)
                    counts.written += 1
            await self._flushed(self._next_sequence - 1)
        finally:
            self.totals.add(counts)
            log.debug("ship stream ended", extra=vars(counts))
        return counts

    def _admit(self, record: LogRecord) -> None:
        record.level = record.level or "info"
        if not record.HasField("time"):
            record.time.GetCurrentTime()
        if not record.agent_id:
            record.agent_id = self._agent_id
        record.sequence = self._next_sequence
        self._next_sequence += 1
        self._pending.append(record)
        self._wake.set()

    async def _room(self) -> None:
        if len(self._pending) < self._max_pending:
            return
        async with self._changed:
            await self._changed.wait_for(
                lambda: len(self._pending) < self._max_pending or self._closing.is_set()
            )

    async def _flushed(self, sequence: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._written >= sequence)

    async def _until_closing(
        self, records: AsyncIterable[LogRecord | object]
    ) -> AsyncIterator[LogRecord | object]:
        """The stream's records until it ends, or until the book starts closing."""
        iterator = aiter(records)
        closing = asyncio.ensure_future(self._closing.wait())
        step: asyncio.Future[LogRecord | object] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise Unavailable(
                        "the logger sidecar is shutting down; the records received are kept"
                    )
                try:
                    record = step.result()
                except StopAsyncIteration:
                    return
                yield record
        finally:
            # Also reached when the caller cancels: no read may outlive the call.
            closing.cancel()
            if step is not None:
                step.cancel()

    # The writer.

    async def _write_loop(self) -> None:
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            await self._write_pending()

    async def _write_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        async with self._io:
            try:
                await asyncio.to_thread(self._store, batch)
            except OSError as exc:
                self.lost += len(batch)
                log.error(
                    "cannot write the log file; a batch is lost",
                    extra={"records": len(batch), "error": str(exc)},
                )
            else:
                self._recent.extend(batch)
            # Advanced even for a lost batch, or its Ship callers would wait forever.
            self._written = batch[-1].sequence
        async with self._changed:
            self._changed.notify_all()

    def _store(self, batch: list[LogRecord]) -> None:
        self._files.write([encode(record) for record in batch])

    # Tail.

    async def tail(self, lines: int, wanted: TailFilter) -> tuple[list[LogRecord], int]:
        """The last `lines` matching records on disk, oldest first.

        Returns:
            The records, and the sequence to follow from, so that a follower neither
            misses nor repeats a record written while the files were read.
        """
        async with self._io:
            cursor = self._written
            if lines <= 0:
                return [], cursor
            found = await asyncio.to_thread(self._read_last, lines, wanted)
        return found, cursor

    async def follow(self, after: int, wanted: TailFilter) -> AsyncIterator[LogRecord]:
        """Every matching record written after sequence `after`, as it is written.

        Runs until the caller stops iterating.

        Raises:
            Unavailable: when the book closes.
        """
        cursor = after
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._has_news, cursor))
                fresh = self._written_after(cursor)
                newest = self._written
            if newest <= cursor:
                raise Unavailable("the logger sidecar is shutting down")
            cursor = newest
            for record in fresh:
                if wanted.matches(record):
                    yield record

    def _has_news(self, cursor: int) -> bool:
        return self._written > cursor or self._closing.is_set()

    def _written_after(self, cursor: int) -> list[LogRecord]:
        fresh: list[LogRecord] = []
        for record in reversed(self._recent):
            if record.sequence <= cursor:
                break
            fresh.append(record)
        fresh.reverse()
        if fresh and fresh[0] is self._recent[0] and fresh[0].sequence > cursor + 1:
            log.warning(
                "a Tail follower fell behind and skips records",
                extra={"skipped": fresh[0].sequence - cursor - 1},
            )
        return fresh

    def _read_last(self, lines: int, wanted: TailFilter) -> list[LogRecord]:
        found: list[LogRecord] = []
        for line in self._files.lines_newest_first():
            record = decode(line)
            if record is not None and wanted.matches(record):
                found.append(record)
                if len(found) == lines:
                    break
        found.reverse()
        return found

    def _sequence_on_disk(self) -> int:
        for line in self._files.lines_newest_first():
            record = decode(line)
            if record is not None:
                return record.sequence
        return 0

    # Shutdown.

    async def begin_close(self) -> None:
        """Ends Ship streams (UNAVAILABLE, records kept) and Tail followers."""
        self._closing.set()
        self._wake.set()
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        """Writes every record received so far and closes the files."""
        await self.begin_close()
        if self._writer is not None:
            await self._writer
        await self._write_pending()  # records a stream admitted as the writer stopped
        await asyncio.to_thread(self._files.close)
