"""Shipping the agent's log lines to its logger sidecar, without ever holding it up.

The sidecar is a convenience, not a dependency: an agent whose logger is down, slow or
gone keeps running its tasks. So producers (handlers calling ``ctx.log``, the stderr of
``--exec`` commands, the agent's own `logging` records) only append to a bounded
buffer, which drops its oldest record when full and counts what it dropped. One sender
task empties the buffer into a single long-lived ``LoggerSidecarService.Ship`` stream,
taking whatever has piled up as one batch, and reconnects with backoff whenever the
stream breaks. The count of dropped records is logged on stderr, shipped to the sidecar
as a record of its own once it is back, and readable as `LogShipper.dropped`.

Records handed to a stream that then breaks may be lost with it: a client stream has no
per-record acknowledgement. Everything still in the buffer is kept for the next stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import grpc
import grpc.aio

from godel_grpc._proto.godel.v1 import log_record_pb2, logger_sidecar_service_pb2
from godel_grpc.agent._backoff import Backoff
from godel_grpc.agent._context import Reporter

_log = logging.getLogger("godel_grpc.agent.log_shipper")

DEFAULT_LOG_BUFFER = 10_000
"""Records held while the sidecar is away or behind; the oldest go first beyond it."""
SHIP_METHOD = "/godel.v1.LoggerSidecarService/Ship"
_BATCH = 500
_MAX_MESSAGE_CHARS = 65_536
_MAX_TEXT = 128
_MAX_FIELDS = 32
_MAX_FIELD_CHARS = 1024
_LEVELS = frozenset({"debug", "info", "warning", "error"})
_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}

LogRecord = log_record_pb2.LogRecord
_Ship: TypeAlias = (
    "grpc.aio.StreamUnaryMultiCallable[log_record_pb2.LogRecord, "
    "logger_sidecar_service_pb2.ShipResponse]"
)
_Call: TypeAlias = (
    "grpc.aio.StreamUnaryCall[log_record_pb2.LogRecord, logger_sidecar_service_pb2.ShipResponse]"
)


class _StreamLost(Exception):
    """The Ship stream could not be opened or broke."""


class LogShipper:
    """A bounded buffer of log records and the task that ships them to a logger sidecar.

    `ship` and `submit` are safe from any thread and never wait. `start` (or `run`)
    needs the event loop; `close` delivers what it can within a time limit.
    """

    def __init__(
        self,
        address: str,
        *,
        buffer: int = DEFAULT_LOG_BUFFER,
        agent_id: Callable[[], str] = str,
        backoff: Backoff | None = None,
    ) -> None:
        """Configures the shipper; nothing connects until `start` or `run`.

        Args:
            address: the logger sidecar's gRPC address, ``host:port``.
            buffer: most records held, at least 1; the oldest are dropped beyond it.
            agent_id: gives the agent's current id, stamped on each record.
            backoff: delays between reconnect attempts.
        """
        if not address:
            raise ValueError("the logger address must not be empty")
        if buffer < 1:
            raise ValueError("the log buffer must hold at least one record")
        self.address = address
        self._limit = buffer
        self._agent_id = agent_id
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._buffer: collections.deque[LogRecord] = collections.deque()
        self._lock = threading.Lock()
        self._dropped = 0
        self._unreported = 0
        """Dropped since the last drop report went out."""
        self._shipped = 0
        self._closed = False
        self._connected = False
        self._outage_logged = False
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._link_changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None

    # Counters.

    @property
    def dropped(self) -> int:
        """Records dropped so far: buffer overflow, or still unsent at `close`."""
        return self._dropped

    @property
    def shipped(self) -> int:
        """Records written to a Ship stream so far."""
        return self._shipped

    @property
    def pending(self) -> int:
        """Records waiting in the buffer."""
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        """Whether a Ship stream is open right now."""
        return self._connected

    async def wait_connected(self, connected: bool = True) -> None:
        """Waits until a Ship stream is open (or, with False, until none is).

        Lets a caller that must not lose its first lines, or a test, wait for the
        link instead of guessing how long it takes.
        """
        async with self._link_changed:
            await self._link_changed.wait_for(lambda: self._connected == connected)

    # Producers: any thread, never blocking.

    def ship(
        self,
        level: str,
        message: str,
        *,
        task_id: str = "",
        source: str = "",
        fields: Mapping[str, object] | None = None,
        created: float | None = None,
    ) -> None:
        """Queues one log line.

        Args:
            level: "debug", "info", "warning" or "error" (anything else counts as
                "info": a log line is never refused).
            message: the text; very long ones are truncated.
            task_id: the task the line belongs to, if any.
            source: where it comes from ("stderr", "task", a logger name).
            fields: extra values; kept as JSON scalars, anything else as text.
            created: POSIX time the line was written; None means now.
        """
        name = _ALIASES.get(level.lower(), level.lower())
        record = LogRecord(
            level=name if name in _LEVELS else "info",
            message=_truncate(message, _MAX_MESSAGE_CHARS),
            agent_id=_truncate(self._agent_id(), _MAX_TEXT),
            task_id=task_id[:_MAX_TEXT],
            source=source[:_MAX_TEXT],
        )
        if created is None:
            record.time.GetCurrentTime()
        else:
            record.time.FromMicroseconds(round(created * 1e6))  # a float holds no more
        if fields:
            record.fields.update(_json_scalars(fields))
        self.submit(record)

    def submit(self, record: LogRecord) -> None:
        """Queues a ready-made record, dropping the oldest one when the buffer is full."""
        first_drop = False
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            if len(self._buffer) >= self._limit:
                self._buffer.popleft()
                self._dropped += 1
                self._unreported += 1
                first_drop = self._unreported == 1
            self._buffer.append(record)
        if first_drop:
            _log.warning(
                "log buffer full; dropping the oldest records until the sidecar catches up",
                extra={"logger_address": self.address, "buffer": self._limit},
            )
        self._notify()

    def _notify(self) -> None:
        if self._wake.is_set():
            return
        loop = self._loop
        if loop is None:
            return  # not running yet: `run` looks at the buffer first thing
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        # RuntimeError: the loop has closed, the agent is gone; the record stays put.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    # The sender.

    def start(self) -> asyncio.Task[None]:
        """Runs `run` in a background task (of the running loop) and returns it."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="godel-log-shipper")
        return self._task

    async def run(self) -> None:
        """Ships until `close`, reconnecting with backoff while the sidecar is away."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # gRPC's own reconnect delays grow to minutes; keep them near ours.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 5_000),
            ],
        )
        ship: _Ship = channel.stream_unary(
            SHIP_METHOD,
            request_serializer=LogRecord.SerializeToString,
            response_deserializer=logger_sidecar_service_pb2.ShipResponse.FromString,
        )
        try:
            while True:
                try:
                    await self._stream(ship)
                    return
                except _StreamLost as lost:
                    await self._on_lost(str(lost))
                if self._closing.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._backoff.next_delay())
        finally:
            await self._set_connected(False)
            await channel.close()

    async def _stream(self, ship: _Ship) -> None:
        """One Ship stream, from opening it to the sidecar's answer after `close`."""
        call: _Call = ship()
        try:
            await call.wait_for_connection()
        except grpc.aio.AioRpcError as exc:
            raise _StreamLost(exc.code().name) from None
        await self._on_connected()
        # Notice a sidecar that goes away while there is nothing to send.
        call.add_done_callback(lambda _: self._wake.set())
        while (batch := await self._next_batch(call)) is not None:
            for index, record in enumerate(batch):
                try:
                    await call.write(record)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    self._restore(batch[index:])
                    raise _StreamLost(_reason(exc)) from None
            self._shipped += len(batch)
        try:
            await call.done_writing()
            answer = await call
        except grpc.aio.AioRpcError as exc:
            raise _StreamLost(exc.code().name) from None
        _log.debug(
            "log stream closed",
            extra={
                "received": answer.received,
                "written": answer.written,
                "filtered": answer.filtered,
                "invalid": answer.invalid,
            },
        )

    async def _next_batch(self, call: _Call) -> list[LogRecord] | None:
        """The next records to send, or None once closing with nothing left."""
        while True:
            self._wake.clear()  # before looking, so no producer's wake-up is missed
            with self._lock:
                reported = self._unreported
                batch = self._take()
                if not batch and self._closing.is_set():
                    return None
            if reported:  # logged outside the lock: logging may call back into `submit`
                _log.warning(
                    "dropped log records: the logger sidecar was unavailable or too slow",
                    extra={"dropped": reported, "dropped_total": self._dropped},
                )
            if batch:
                return batch
            if call.done():
                raise _StreamLost("the logger sidecar ended the stream")
            await self._wake.wait()

    def _take(self) -> list[LogRecord]:
        batch: list[LogRecord] = []
        if self._unreported:
            batch.append(self._drop_report(self._unreported))
            self._unreported = 0
        while self._buffer and len(batch) < _BATCH:
            batch.append(self._buffer.popleft())
        return batch

    def _drop_report(self, count: int) -> LogRecord:
        record = LogRecord(
            level="warning",
            message=f"the agent dropped {count} log records: the logger sidecar was "
            "unavailable or too slow",
            agent_id=self._agent_id()[:_MAX_TEXT],
            source=_log.name,
        )
        record.time.GetCurrentTime()
        record.fields.update({"dropped": count, "droppedTotal": self._dropped})
        return record

    def _restore(self, records: list[LogRecord]) -> None:
        """Puts unsent records back in front; the oldest go if that overflows."""
        with self._lock:
            self._buffer.extendleft(reversed(records))
            while len(self._buffer) > self._limit:
                self._buffer.popleft()
                self._dropped += 1
                self._unreported += 1

    async def _set_connected(self, connected: bool) -> None:
        async with self._link_changed:
            self._connected = connected
            self._link_changed.notify_all()

    async def _on_connected(self) -> None:
        self._backoff.reset()
        await self._set_connected(True)
        if self._outage_logged:
            _log.info(
                "logger sidecar reachable again",
                extra={"logger_address": self.address, "pending": len(self._buffer)},
            )
        self._outage_logged = False

    async def _on_lost(self, reason: str) -> None:
        await self._set_connected(False)
        if not self._outage_logged and not self._closing.is_set():
            self._outage_logged = True
            _log.warning(
                "logger sidecar unavailable; buffering log records and retrying",
                extra={"logger_address": self.address, "reason": reason, "buffer": self._limit},
            )

    async def close(self, timeout: float = 2.0) -> None:
        """Sends what is buffered (for up to `timeout` seconds) and stops.

        Records still unsent after that are counted as dropped. Idempotent.
        """
        self._closing.set()
        self._wake.set()
        if self._task is not None and not self._task.done():
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unsent = len(self._buffer)
            self._buffer.clear()
            self._dropped += unsent
        if self._dropped:
            _log.warning(
                "log shipping stopped; some records never reached the logger sidecar",
                extra={"dropped_total": self._dropped, "unsent_at_close": unsent},
            )


class ShippingReporter:
    """A `Reporter` that also copies one attempt's log lines to the logger sidecar.

    Progress and log lines still go to the coordinator through `inner`; the copy for
    the sidecar carries where the lines come from (``stderr`` of an ``--exec`` command,
    or ``task`` for a Python handler) and the attempt id.
    """

    def __init__(
        self, inner: Reporter | None, shipper: LogShipper, *, source: str, attempt_id: str
    ) -> None:
        self._inner = inner
        self._shipper = shipper
        self._source = source
        self._fields = {"attemptId": attempt_id}

    def report_progress(self, task_id: str, attempt_id: str, fraction: float, message: str) -> None:
        """Passes progress on unchanged (the sidecar only keeps log lines)."""
        if self._inner is not None:
            self._inner.report_progress(task_id, attempt_id, fraction, message)

    def report_log(self, task_id: str, level: str, message: str) -> None:
        """Passes the line on, and ships a copy."""
        if self._inner is not None:
            self._inner.report_log(task_id, level, message)
        self._shipper.ship(
            level, message, task_id=task_id, source=self._source, fields=self._fields
        )


_TASK_LOGGER = "godel_grpc.agent.task"
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class ShippingHandler(logging.Handler):
    """Copies the agent's own `logging` records, at info and above, to the sidecar.

    Task log lines are left out (`ShippingReporter` ships those, at every level and
    with their origin), and so are the shipper's own complaints, which are about the
    sidecar and would only loop back into the buffer they describe.
    """

    def __init__(self, shipper: LogShipper, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._shipper = shipper

    def filter(self, record: logging.LogRecord) -> bool:
        """Skips task lines and the shipper's own records."""
        if record.name in (_TASK_LOGGER, _log.name):
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Queues the record; never raises into the code that logged."""
        try:
            extras = {
                key: value
                for key, value in vars(record).items()
                if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
            }
            if record.exc_info:
                extras["exception"] = logging.Formatter().formatException(record.exc_info)
            task_id = extras.pop("task_id", "")
            self._shipper.ship(
                _level_name(record.levelno),
                record.getMessage(),
                task_id=task_id if isinstance(task_id, str) else str(task_id),
                source=record.name,
                fields=extras,
                created=record.created,
            )
        except Exception:  # logging's contract: report through handleError, never raise
            self.handleError(record)


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _json_scalars(fields: Mapping[str, object]) -> dict[str, Any]:
    """Fields a `Struct` can hold and the sidecar's size rule allows."""
    out: dict[str, Any] = {}
    for key, value in list(fields.items())[:_MAX_FIELDS]:
        if value is None or isinstance(value, bool | int | float):
            out[str(key)] = value
        else:
            out[str(key)] = _truncate(str(value), _MAX_FIELD_CHARS)
    return out


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = " [truncated]"
    return text[: limit - len(marker)] + marker


def _reason(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return "the stream had already ended"
