"""Makes the coordinator's events durable, in order, a batch at a time.

Commands apply their events to memory at once and `record` them here; the journal
writes everything recorded while the previous write was in flight as one append, so a
burst of commands shares one transaction and one fsync. A caller that must not answer
before its events are durable awaits the future `record` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.core.events import type_name
from godel_grpc.store.base import EventStore, NewEvent

log = logging.getLogger(__name__)


class Journal:
    """Ordered, batched appends of events to an event store."""

    def __init__(
        self,
        store: EventStore,
        on_written: Callable[[int, float], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Creates a journal.

        Args:
            store: where events go.
            on_written: called with (events in the batch, seconds the append took).
            on_fatal: called once if an append fails: memory is then ahead of the log,
                so the coordinator must stop rather than carry on.
        """
        self._store = store
        self._on_written = on_written
        self._on_fatal = on_fatal
        self._pending: list[NewEvent] = []
        self._pending_future: asyncio.Future[None] | None = None
        self._writing_future: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._wakeup = asyncio.Event()
        self._closed = False

    def start(self) -> None:
        """Starts the writer task."""
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="journal")

    def record(self, events: Sequence[event_pb2.Event]) -> asyncio.Future[None]:
        """Queues events for the next append; the future resolves once they are durable."""
        if self._failed is not None:
            raise RuntimeError("event journal failed") from self._failed
        pending = self._pending
        for event in events:
            pending.append(
                NewEvent(event.stream, type_name(event), event.SerializeToString(), event.agent_id)
            )
        if self._pending_future is None:
            self._pending_future = asyncio.get_running_loop().create_future()
            self._wakeup.set()
        return self._pending_future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closed:
                    return
                continue
            batch, future = self._pending, self._pending_future
            self._pending, self._pending_future = [], None
            self._writing_future = future
            started = time.perf_counter()
            try:
                await self._store.append(batch)
            except BaseException as exc:  # the log is now behind memory: stop everything
                self._failed = exc
                log.critical("event store append failed", exc_info=exc)
                if future is not None and not future.done():
                    future.set_exception(exc)
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                raise
            if self._on_written is not None:
                self._on_written(len(batch), time.perf_counter() - started)
            if future is not None and not future.done():
                future.set_result(None)
            self._writing_future = None
            if self._pending:
                self._wakeup.set()

    async def flush(self) -> None:
        """Waits until everything recorded so far is durable."""
        for future in (self._writing_future, self._pending_future):
            if future is not None:
                await asyncio.shield(future)

    async def close(self) -> None:
        """Flushes and stops the writer."""
        await self.flush()
        self._closed = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer

    @property
    def idle(self) -> bool:
        """True when nothing is waiting to be written (memory equals the log)."""
        return not self._pending and self._pending_future is None and self._writing_future is None
