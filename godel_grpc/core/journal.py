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

_OPENS_STREAM = frozenset({"task.submitted", "agent.registered", "convoy.created", "saga.created"})
"""Event types that start a stream named after a freshly made id."""

LAZY_DELAY = 0.005
"""Seconds a batch of lazy events waits for an urgent one to share its commit."""


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
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._urgent_pending = False
        self._closed = False

    def start(self) -> None:
        """Starts the writer task."""
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="journal")

    def record(
        self, events: Sequence[event_pb2.Event], *, urgent: bool = True
    ) -> asyncio.Future[None]:
        """Queues events for the next append; the future resolves once they are durable.
        Every caller of a batch shares its future; each gets a shield of it, so a caller
        that is cancelled (its client went away) cannot cancel the others' wait."""
        self.add(events, urgent=urgent)
        assert self._pending_future is not None
        return asyncio.shield(self._pending_future)

    def add(self, events: Sequence[event_pb2.Event], *, urgent: bool = True) -> None:
        """Queues events for the next append, for a caller that does not wait for them
        to be durable (a lease, a result folded on an agent's stream): no future.

        Args:
            events: the events, in order.
            urgent: False for events nobody waits on (leases): they ride along with the
                next urgent batch, or go out on their own after `LAZY_DELAY`, so they do
                not cost a commit of their own in front of a result someone awaits.
        """
        if self._failed is not None:
            raise RuntimeError("event journal failed") from self._failed
        pending = self._pending
        for event in events:
            kind = type_name(event)
            pending.append(
                NewEvent(
                    event.stream,
                    kind,
                    event.SerializeToString(),
                    event.agent_id,
                    new_stream=kind in _OPENS_STREAM,
                )
            )
        loop = asyncio.get_running_loop()
        if self._pending_future is None:
            self._pending_future = loop.create_future()
        if urgent:
            self._urgent_pending = True
            self._wakeup.set()
        elif self._lazy_timer is None and not self._wakeup.is_set():
            self._lazy_timer = loop.call_later(LAZY_DELAY, self._wake_lazy)

    def _wake_lazy(self) -> None:
        self._lazy_timer = None
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closed:
                    return
                continue
            if self._lazy_timer is not None:
                self._lazy_timer.cancel()
                self._lazy_timer = None
            batch, future = self._pending, self._pending_future
            self._pending, self._pending_future = [], None
            self._urgent_pending = False
            self._writing_future = future
            started = time.perf_counter()
            try:
                await self._store.write(batch)
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
            if self._urgent_pending:
                self._wakeup.set()
            elif self._pending and self._lazy_timer is None:
                self._lazy_timer = asyncio.get_running_loop().call_later(
                    LAZY_DELAY, self._wake_lazy
                )

    async def flush(self) -> None:
        """Waits until everything recorded so far is durable."""
        if self._pending:
            self._urgent_pending = True
            self._wakeup.set()
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
