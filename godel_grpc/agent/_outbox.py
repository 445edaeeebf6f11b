"""Everything the agent has to say, gathered so that it leaves in as few messages as possible.

Every streamed message has a fixed cost on both ends, so parts are never sent one by
one: producers drop results, progress, log lines and released attempts here, and the
link's single writer takes all that has piled up as one `AgentMessage`. While a write
is in flight the next batch grows on its own, so batching adapts to load without any
timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default receive limit; the coordinator must accept at least this much."""

MESSAGE_HEADROOM = 64 * 1024
"""Bytes of a message kept free for everything but results (ids, framing, a few logs)."""
_PART_OVERHEAD = 8  # tag and length prefix of a repeated field element, roughly
_MAX_LOG_CHARS = 8 * 1024

_T = TypeVar("_T")


class Outbox:
    """The agent's outgoing parts, waiting for the link's writer.

    Memory stays bounded: results and released ids are bounded by the attempts the
    agent runs, progress keeps only the latest report per attempt, and log lines are a
    ring that drops the oldest and says how many it dropped.

    Not thread-safe: call it from the event loop (`ThreadSafeReporter` marshals calls
    from handler threads).
    """

    def __init__(
        self,
        *,
        max_logs: int = 10_000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._results: collections.deque[link_pb2.TaskResult] = collections.deque()
        self._released: list[str] = []
        self._progress: dict[str, link_pb2.TaskProgress] = {}
        self._logs: collections.deque[link_pb2.AgentLogLine] = collections.deque(maxlen=max_logs)
        # Latest unsent write per key: bounded by the memory's key limit.
        self._memory: dict[str, link_pb2.MemoryWrite] = {}
        self._dropped_logs = 0
        self._draining = False
        self._draining_unsent = False
        self._closed = False
        self.closed_at: float | None = None
        """`time.monotonic()` when `close` was first called."""
        self._budget = max(max_message_bytes - MESSAGE_HEADROOM, 1)
        self._ready = asyncio.Event()
        self.closed_event = asyncio.Event()
        """Set once `close` was called; the link uses it to stop waiting to reconnect."""

    # Producers.

    def add_result(self, result: link_pb2.TaskResult) -> None:
        """Queues a finished attempt's result."""
        self._results.append(result)
        self._ready.set()

    def release(self, attempt_ids: list[str]) -> None:
        """Queues attempts the agent gives back unfinished."""
        if attempt_ids:
            self._released.extend(attempt_ids)
            self._ready.set()

    def set_progress(self, progress: link_pb2.TaskProgress) -> None:
        """Records the latest progress of an attempt, replacing any unsent earlier one."""
        if self._closed:
            return
        self._progress[progress.attempt_id] = progress
        self._ready.set()

    def add_log(self, line: link_pb2.AgentLogLine) -> None:
        """Queues a log line, dropping the oldest unsent one when full."""
        if self._closed:
            return
        if len(line.message) > _MAX_LOG_CHARS:
            line.message = line.message[:_MAX_LOG_CHARS] + " [truncated]"
        if len(self._logs) == self._logs.maxlen:
            self._dropped_logs += 1
        self._logs.append(line)
        self._ready.set()

    def add_memory_write(self, write: link_pb2.MemoryWrite) -> None:
        """Queues a memory write, replacing an unsent earlier write of the same key."""
        self._memory.pop(write.key, None)
        self._memory[write.key] = write
        self._ready.set()

    def unsent_memory(self) -> dict[str, link_pb2.MemoryWrite]:
        """Memory writes not handed to a link yet, by key."""
        return dict(self._memory)

    def set_draining(self) -> None:
        """Marks the agent as draining: the next message, and the first after every
        reconnect, carries ``draining=True``."""
        self._draining = True
        self._draining_unsent = True
        self._ready.set()

    def on_connected(self) -> None:
        """Called after each welcome: a new link has not heard that we are draining."""
        if self._draining:
            self._draining_unsent = True
            self._ready.set()

    def close(self) -> None:
        """No more results will come: once empty, `take` returns None so the writer can
        half-close the stream."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self._closed = True
        self._ready.set()
        self.closed_event.set()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def must_deliver(self) -> bool:
        """Whether results or released ids are waiting; those are worth a reconnect."""
        return bool(self._results or self._released or self._memory)

    def has_parts(self) -> bool:
        """Whether anything at all is waiting to be sent."""
        return bool(
            self._results
            or self._released
            or self._progress
            or self._logs
            or self._dropped_logs
            or self._draining_unsent
            or self._memory
        )

    # The writer.

    async def take(self, idle_timeout: float) -> link_pb2.AgentMessage | None:
        """Waits for parts and returns them as one message.

        Args:
            idle_timeout: seconds to wait for parts; when they run out, returns an
                empty message, which the coordinator counts as a heartbeat.

        Returns:
            The next message, or None once the outbox is closed and empty.
        """
        if not self.has_parts():
            if self._closed:
                return None
            self._ready.clear()
            try:
                # asyncio.timeout, not wait_for: wait_for runs the wait as a task of its
                # own, one more task and loop turn per message on the result's way out.
                async with asyncio.timeout(idle_timeout):
                    await self._ready.wait()
            except TimeoutError:
                return link_pb2.AgentMessage()
            # Parts often arrive in a burst (several handlers released by one event):
            # one turn of the loop lets the rest of the burst join this message.
            await asyncio.sleep(0)
            if not self.has_parts():
                return None if self._closed else link_pb2.AgentMessage()
        return self._pack()

    def restore(self, message: link_pb2.AgentMessage) -> None:
        """Puts back what a failed write carried, ahead of anything newer.

        Results and released ids matter, so they go out again on the next link (the
        coordinator drops duplicates). Progress is stale by then and is not restored.
        """
        self._results.extendleft(reversed(message.results))
        self._released[:0] = list(message.released_attempt_ids)
        for line in reversed(message.logs):
            if len(self._logs) == self._logs.maxlen:
                self._dropped_logs += 1
                break
            self._logs.appendleft(line)
        for write in message.memory_writes:
            if write.key not in self._memory:  # a newer write of the key wins
                self._memory[write.key] = write
        if message.draining:
            self._draining_unsent = True
        if self.has_parts():
            self._ready.set()

    def _pack(self) -> link_pb2.AgentMessage:
        message = link_pb2.AgentMessage(draining=self._draining_unsent)
        self._draining_unsent = False
        budget = self._budget
        # Always take at least one result so that a single big one still moves.
        while self._results:
            size = self._results[0].ByteSize() + _PART_OVERHEAD
            if size > budget and len(message.results) > 0:
                break
            message.results.append(self._results.popleft())
            budget -= size
        while self._memory and (budget > 0 or not message.memory_writes):
            key = next(iter(self._memory))
            write = self._memory.pop(key)
            message.memory_writes.append(write)
            budget -= write.ByteSize() + _PART_OVERHEAD
        while self._released and budget > 0:
            attempt_id = self._released.pop(0)
            message.released_attempt_ids.append(attempt_id)
            budget -= len(attempt_id) + _PART_OVERHEAD
        for attempt_id in list(self._progress):
            if budget <= 0:
                break
            progress = self._progress.pop(attempt_id)
            message.progress.append(progress)
            budget -= progress.ByteSize() + _PART_OVERHEAD
        if self._dropped_logs:
            message.logs.add(
                level="warning",
                message=f"agent dropped {self._dropped_logs} log lines: the link fell behind",
            ).time.GetCurrentTime()
            self._dropped_logs = 0
        while self._logs and budget > 0:
            line = self._logs.popleft()
            message.logs.append(line)
            budget -= line.ByteSize() + _PART_OVERHEAD
        return message


class ThreadSafeReporter:
    """Feeds task progress and log lines into an `Outbox` from any thread.

    Sync handlers run in worker threads, but the outbox belongs to the event loop; calls
    from other threads are handed to the loop instead of touching it directly.
    """

    def __init__(self, outbox: Outbox, loop: asyncio.AbstractEventLoop) -> None:
        self._outbox = outbox
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def report_progress(self, task_id: str, attempt_id: str, fraction: float, message: str) -> None:
        """Queues a progress report (see `Reporter`)."""
        progress = link_pb2.TaskProgress(
            task_id=task_id, attempt_id=attempt_id, fraction=fraction, message=message
        )
        self._on_loop(self._outbox.set_progress, progress)

    def report_log(self, task_id: str, level: str, message: str) -> None:
        """Queues a task log line (see `Reporter`)."""
        line = link_pb2.AgentLogLine(task_id=task_id, level=level, message=message)
        line.time.GetCurrentTime()
        self._on_loop(self._outbox.add_log, line)

    def report_memory(
        self, write: link_pb2.MemoryWrite, on_queued: Callable[[], None] | None = None
    ) -> None:
        """Queues a memory write, then calls `on_queued` on the loop."""

        def queue(message: link_pb2.MemoryWrite) -> None:
            self._outbox.add_memory_write(message)
            if on_queued is not None:
                on_queued()

        self._on_loop(queue, write)

    def _on_loop(self, fn: Callable[[_T], None], arg: _T) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(arg)
            return
        # RuntimeError means the loop is gone: the agent has stopped and the line has
        # nowhere to go.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, arg)
