"""The agent: one link to the coordinator, many attempts running behind it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio
from google.protobuf import json_format, struct_pb2

from godel_grpc import __version__
from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_pb2, task_pb2
from godel_grpc.agent._attempt import (
    Handler,
    HandlerSpec,
    context_from_assignment,
    plain_json,
    run_attempt,
)
from godel_grpc.agent._backoff import Backoff
from godel_grpc.agent._context import Reporter, TaskContext
from godel_grpc.agent._exec import ExecHandler
from godel_grpc.agent._link import Link
from godel_grpc.agent._log_shipper import (
    DEFAULT_LOG_BUFFER,
    LogShipper,
    ShippingHandler,
    ShippingReporter,
)
from godel_grpc.agent._memory import Memory, Write
from godel_grpc.agent._outbox import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MESSAGE_HEADROOM,
    Outbox,
    ThreadSafeReporter,
)
from godel_grpc.auth.channel import open_channel

_log = logging.getLogger("godel_grpc.agent")

# The agent's channel accepts big assignments; payloads are the user's business.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# Feedback records the agent keeps for `recent_feedback`.
_RECENT_FEEDBACK = 16
# How long a stopping agent keeps trying to hand its last log lines to the sidecar.
_LOG_FLUSH_TIMEOUT = 2.0

_H = TypeVar("_H", bound=Handler)


@dataclass(eq=False)
class _Attempt:
    assignment: link_pb2.TaskAssignment
    spec: HandlerSpec | None
    ctx: TaskContext | None = None
    task: asyncio.Task[None] | None = None
    # Why the agent stopped the attempt itself: the coordinator cancelled it (no
    # result is sent), or the agent gave it back while shutting down (its id goes out
    # in released_attempt_ids).
    stop: Literal["cancelled", "released"] | None = None

    @property
    def id(self) -> str:
        return self.assignment.attempt_id


class Agent:
    """A long-lived worker that runs the coordinator's tasks with registered handlers.

    Usage::

        agent = Agent("127.0.0.1:50051", role="builder", capacity=4)

        @agent.handler
        async def build(ctx: TaskContext) -> dict[str, object]:
            await ctx.progress(0.5, "compiling")
            return {"ok": True}

        await agent.run()          # until shutdown() or a drain from the coordinator

    ``async with agent:`` runs it in the background and shuts it down on exit.

    How it behaves on the link:

    * Results, progress and log lines go into one outbox that a single writer empties
      into one `AgentMessage` at a time, so results that are ready together travel
      together. An empty message is sent as a heartbeat when nothing else was sent for
      the welcome's ``heartbeat_interval``.
    * At most `capacity` attempts run at once. Assignments beyond that wait locally
      (up to `capacity` of them, which covers leases that arrive while cancelled
      attempts are still stopping); any more are given back at once through
      ``released_attempt_ids``.
    * A cancelled attempt is stopped and produces no result at all: the coordinator
      has stopped wanting one. A cancelled sync handler keeps its thread until it
      returns (threads cannot be interrupted); it should watch ``ctx.cancelled``.
    * When the stream fails, running attempts keep going; the agent reconnects with
      jittered exponential backoff, presents its resume token to keep its id, and
      sends the results it still holds. The coordinator drops any that went stale.
    * A ``drain`` from the coordinator stops the agent taking work; running attempts
      finish, their results are sent, and `run` returns.
    * `shutdown` does the same but bounded by a grace period: attempts still running
      when it ends are stopped and released unfinished.
    * Handlers read and write the agent's reflex memory through ``ctx.memory`` (also
      `memory`); writes go to the coordinator, which hands the memory back on every
      welcome. With a ``reflex`` config whose memory is "persistent", it survives
      restarts of the agent and the coordinator. Feedback on the agent's work arrives
      on the link (`recent_feedback`, ``on_feedback``), and each assignment carries
      the agent's score and recent lessons (``ctx.score``, ``ctx.lessons``).
    * With a ``logger`` address, every log line (``ctx.log``, an ``--exec`` command's
      stderr, the agent's own `logging` records at info and above) is also shipped to
      that logger sidecar. Shipping never holds a task up: lines wait in a bounded
      buffer while the sidecar is away, the oldest are dropped beyond it, and
      `logs_dropped` says how many.
    """

    def __init__(
        self,
        coordinator: str = "127.0.0.1:50051",
        *,
        role: str,
        actions: Sequence[str] = (),
        capacity: int = 1,
        name: str = "",
        labels: Mapping[str, str] | None = None,
        version: str | None = None,
        heartbeat_interval: float = 5.0,
        drain_grace: float = 10.0,
        welcome_timeout: float = 10.0,
        flush_timeout: float = 5.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        keepalive_time: float = 20.0,
        keepalive_timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        token: str = "",
        channel_options: Sequence[tuple[str, Any]] = (),
        circuit_breaker: agent_pb2.CircuitBreakerConfig | None = None,
        queues: Sequence[str] = (),
        partitions: Sequence[str] = (),
        logger: str = "",
        logger_buffer: int = DEFAULT_LOG_BUFFER,
        reflex: agent_pb2.ReflexConfig | None = None,
        on_feedback: Callable[[link_pb2.AgentFeedback], None] | None = None,
    ) -> None:
        """Configures the agent; nothing connects until `run`.

        Args:
            coordinator: the coordinator's gRPC address, ``host:port``; several,
                comma-separated, for an active coordinator and its standbys: each
                reconnect tries the next.
            role: the role this agent serves.
            actions: action names it serves besides those registered with `action`.
            capacity: most attempts run at once, 1 to 10,000.
            name: unique display name; empty lets the coordinator choose.
            labels: free-form labels shown with the agent.
            version: software version reported in the hello; defaults to godel-grpc's.
            heartbeat_interval: seconds between heartbeats until the welcome says
                otherwise.
            drain_grace: seconds `shutdown` lets running attempts finish by default.
            welcome_timeout: seconds to wait for the welcome after the hello.
            flush_timeout: seconds after the drain ends to keep trying to deliver
                results if the link is down.
            reconnect_initial: first backoff ceiling in seconds; doubles per failure.
            reconnect_max: largest backoff ceiling in seconds.
            keepalive_time: seconds between HTTP/2 keepalive pings, which is how a
                coordinator that vanished without closing the connection is noticed.
            keepalive_timeout: seconds to wait for a ping's answer.
            max_message_bytes: largest message the coordinator accepts; batches stay
                below it and a bigger single result becomes an error.
            credentials: TLS credentials; None connects in plain text.
            token: bearer token sent on the link (``authorization`` metadata); a
                token with the ``agent`` scope is bound to one agent name, which must
                then be `name`.
            channel_options: extra gRPC channel options, appended to the agent's own.
            circuit_breaker: settings of the coordinator's breaker for this agent; None
                leaves it on with the defaults.
            queues: backpressure queues whose tasks this agent runs.
            partitions: bulkhead partitions it joins, as "BULKHEAD/PARTITION".
            logger: the logger sidecar's address, ``host:port``; empty ships no logs.
            logger_buffer: log records held while the logger sidecar is away.
            reflex: the agent's reflex config (memory, feedback loop, adaptation
                rate), declared in the hello; None keeps what the coordinator recorded
                for this agent, if anything.
            on_feedback: called on the event loop with each feedback record the
                coordinator passes on; it must not block.
        """
        if not role:
            raise ValueError("role is required")
        if not 1 <= capacity <= 10_000:
            raise ValueError("capacity must be between 1 and 10000")
        self._coordinators = [each.strip() for each in coordinator.split(",") if each.strip()]
        if not self._coordinators:
            raise ValueError("coordinator address is required")
        self._coordinator = coordinator
        self._role = role
        self._actions: list[str] = list(dict.fromkeys(actions))
        self._capacity = capacity
        self._name = name
        self._labels = dict(labels or {})
        self._version = version if version is not None else __version__
        self._circuit_breaker = circuit_breaker
        self._queues = list(queues)
        self._partitions = list(partitions)
        self._reflex = reflex
        self._on_feedback_cb = on_feedback
        self._feedback: collections.deque[link_pb2.AgentFeedback] = collections.deque(
            maxlen=_RECENT_FEEDBACK
        )
        self._memory = Memory(self._queue_memory)
        self._heartbeat = heartbeat_interval
        self._drain_grace = drain_grace
        self._welcome_timeout = welcome_timeout
        self._flush_timeout = flush_timeout
        self._reconnect = (reconnect_initial, reconnect_max)
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._token = token
        self._channel_options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            # The channel's own reconnect backoff grows to minutes by default, which
            # would make our faster backoff meaningless while the coordinator is down.
            ("grpc.initial_reconnect_backoff_ms", int(reconnect_initial * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(reconnect_initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_max * 1000)),
            ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
            *channel_options,
        ]

        self._default: HandlerSpec | None = None
        self._by_action: dict[str, HandlerSpec] = {}

        self._agent_id = ""
        self._resume_token = ""
        self._claimed = False
        self._shutdown_before_run = False
        self._draining = False
        self._outbox = Outbox(max_message_bytes=max_message_bytes)
        self._reporter: ThreadSafeReporter | None = None
        self._running: dict[str, _Attempt] = {}
        self._pending: collections.OrderedDict[str, _Attempt] = collections.OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()
        self._finished = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._shipper = (
            LogShipper(logger, buffer=logger_buffer, agent_id=lambda: self._agent_id)
            if logger
            else None
        )

    # Registration.

    def handler(self, fn: _H) -> _H:
        """Registers the handler for tasks that target the agent's role.

        It also serves actions that have no handler of their own. Usable as a
        decorator; returns `fn` unchanged.
        """
        self._check_not_started()
        self._default = HandlerSpec.of(fn)
        return fn

    def action(self, name: str) -> Callable[[_H], _H]:
        """Registers a handler for tasks that target action `name`.

        The action is added to those announced in the hello. Usable as a decorator::

            @agent.action("deploy")
            def deploy(ctx: TaskContext) -> None: ...
        """
        if not name:
            raise ValueError("action name must not be empty")

        def register(fn: _H) -> _H:
            self._check_not_started()
            self._by_action[name] = HandlerSpec.of(fn)
            if name not in self._actions:
                self._actions.append(name)
            return fn

        return register

    # Identity.

    @property
    def role(self) -> str:
        """The role the agent serves."""
        return self._role

    @property
    def actions(self) -> tuple[str, ...]:
        """The action names announced in the hello."""
        return tuple(self._actions)

    @property
    def capacity(self) -> int:
        """The most attempts the agent runs at once."""
        return self._capacity

    @property
    def agent_id(self) -> str:
        """The id from the last welcome, or ``""`` before the first."""
        return self._agent_id

    @property
    def name(self) -> str:
        """The agent's name: as configured, then as the coordinator confirmed it."""
        return self._name

    @property
    def memory(self) -> Memory:
        """The agent's reflex memory, the same object handlers get as ``ctx.memory``."""
        return self._memory

    @property
    def recent_feedback(self) -> list[link_pb2.AgentFeedback]:
        """The latest feedback records pushed by the coordinator, oldest first."""
        return list(self._feedback)

    @property
    def draining(self) -> bool:
        """Whether the agent has stopped taking work."""
        return self._draining

    @property
    def log_shipper(self) -> LogShipper | None:
        """What ships log lines to the logger sidecar; None without a logger address."""
        return self._shipper

    @property
    def logs_dropped(self) -> int:
        """Log records the logger sidecar never got (buffer full, or unsent at the end)."""
        return self._shipper.dropped if self._shipper is not None else 0

    # Lifecycle.

    async def run(self) -> None:
        """Connects and serves tasks until the agent has drained.

        Returns after `shutdown` or a coordinator drain, once results are delivered
        (or `flush_timeout` gave up on a link that stayed down).

        Raises:
            AgentRejected: the coordinator refused the agent for good.
            RuntimeError: the agent already ran, or has no handler.
        """
        self._claim()
        await self._serve()

    async def shutdown(self, grace: float | None = None) -> None:
        """Drains the agent and waits until `run` has returned.

        The coordinator hears ``draining=True`` and sends no more work; running
        attempts get `grace` seconds (default: `drain_grace`) to finish, then are
        stopped and released unfinished; results are flushed and the link closed.
        Calling it again, or after `run` has ended, just waits for the same end.
        """
        if not self._claimed:
            self._shutdown_before_run = True
            return
        if self._shutdown_task is None and not self._finished.is_set():
            grace = self._drain_grace if grace is None else grace
            self._shutdown_task = self._spawn(self._drain(grace), "godel-agent-shutdown")
        await self._finished.wait()

    async def __aenter__(self) -> Agent:
        self._claim()
        self._run_task = asyncio.create_task(self._serve(), name="godel-agent-run")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
        assert self._run_task is not None
        if exc_type is None:
            await self._run_task  # surfaces AgentRejected
        else:
            with contextlib.suppress(Exception):
                await self._run_task

    def _claim(self) -> None:
        if self._claimed:
            raise RuntimeError("an Agent runs once; create a new one")
        if self._shutdown_before_run:
            raise RuntimeError("the agent was shut down before it ran")
        if self._default is None and not self._by_action:
            raise RuntimeError("register a handler with @agent.handler or @agent.action first")
        self._claimed = True

    def _check_not_started(self) -> None:
        if self._claimed:
            raise RuntimeError("handlers must be registered before the agent runs")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._reporter = ThreadSafeReporter(self._outbox, loop)
        shipping = self._start_shipping()
        channels = [self._open_channel(address) for address in self._coordinators]
        _log.info(
            "agent starting",
            extra={
                "coordinator": self._coordinator,
                "role": self._role,
                "capacity": self._capacity,
            },
        )
        try:
            link = Link(
                channels,
                self._outbox,
                hello=self._hello,
                on_welcome=self._on_welcome,
                on_message=self._on_message,
                heartbeat_interval=self._heartbeat,
                welcome_timeout=self._welcome_timeout,
                flush_timeout=self._flush_timeout,
                backoff=Backoff(*self._reconnect),
            )
            await link.run()
        finally:
            await self._abandon_everything()
            for channel in channels:
                await channel.close()
            self._finished.set()
            _log.info("agent stopped", extra={"agent_id": self._agent_id})
            await self._stop_shipping(shipping)

    def _start_shipping(self) -> logging.Handler | None:
        """Starts the log shipper, if any, and hooks the agent's own records into it."""
        if self._shipper is None:
            return None
        self._shipper.start()
        handler = ShippingHandler(self._shipper)
        logging.getLogger().addHandler(handler)
        return handler

    async def _stop_shipping(self, handler: logging.Handler | None) -> None:
        if self._shipper is None:
            return
        if handler is not None:
            logging.getLogger().removeHandler(handler)
        await self._shipper.close(_LOG_FLUSH_TIMEOUT)

    def _open_channel(self, address: str) -> grpc.aio.Channel:
        return open_channel(
            address,
            token=self._token,
            credentials=self._credentials,
            options=self._channel_options,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _abandon_everything(self) -> None:
        """Stops what is left when `run` ends early (cancelled, or rejected)."""
        for task in list(self._background):
            task.cancel()
        self._pending.clear()
        tasks = [a.task for a in self._running.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)

    # Draining.

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        self._outbox.set_draining()
        self._outbox.release(list(self._pending))
        self._pending.clear()
        self._update_idle()
        _log.info("draining", extra={"running": len(self._running)})

    async def _drain(self, grace: float | None) -> None:
        """Stops taking work, waits up to `grace` for running attempts, then closes."""
        self._begin_drain()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            await self._release_running()
        self._outbox.close()

    async def _release_running(self) -> None:
        victims = [a for a in self._running.values() if a.stop is None]
        _log.warning(
            "grace period over; releasing unfinished attempts", extra={"count": len(victims)}
        )
        for attempt in victims:
            self._stop_attempt(attempt, "released")
        await asyncio.gather(*(a.task for a in victims if a.task), return_exceptions=True)

    # The link's callbacks.

    def _hello(self) -> link_pb2.AgentHello:
        return link_pb2.AgentHello(
            name=self._name,
            role=self._role,
            actions=self._actions,
            capacity=self._capacity,
            labels=self._labels,
            resume_token=self._resume_token,
            version=self._version,
            circuit_breaker=self._circuit_breaker,
            queues=self._queues,
            partitions=self._partitions,
            reflex=self._reflex,
        )

    def _queue_memory(self, write: Write) -> None:
        """Hands a memory write to the link (from any thread)."""
        key, value, deleted = write
        message = link_pb2.MemoryWrite(key=key, delete=deleted)
        if not deleted:
            message.value.CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
        if self._reporter is not None:
            self._reporter.report_memory(message, lambda: self._memory.confirm(write))
        else:  # before run: nothing else touches the outbox yet
            self._outbox.add_memory_write(message)
            self._memory.confirm(write)

    def _on_welcome(self, welcome: link_pb2.AgentWelcome) -> None:
        unsent: dict[str, Write] = {
            key: (key, plain_json(json_format.MessageToDict(w.value)), w.delete)
            for key, w in self._outbox.unsent_memory().items()
        }
        self._memory.reset(plain_json(json_format.MessageToDict(welcome.memory)), unsent)
        self._agent_id = welcome.agent_id
        self._name = welcome.name or self._name
        self._resume_token = welcome.resume_token
        _log.info(
            "connected",
            extra={
                "agent_id": self._agent_id,
                "agent_name": self._name,
                "resumed": welcome.resumed,
                "running": len(self._running),
            },
        )

    def _on_message(self, message: link_pb2.CoordinatorMessage) -> None:
        # Cancellations first: they free slots for assignments in the same message.
        for cancellation in message.cancellations:
            self._on_cancellation(cancellation)
        for assignment in message.assignments:
            self._on_assignment(assignment)
        for feedback in message.feedback:
            self._on_feedback(feedback)
        if message.drain and not self._draining:
            _log.info("coordinator asked the agent to drain")
            self._begin_drain()
            self._spawn(self._drain(None), "godel-agent-drain")

    def _on_feedback(self, feedback: link_pb2.AgentFeedback) -> None:
        self._feedback.append(feedback)
        _log.info(
            "feedback received",
            extra={
                "task_id": feedback.task_id,
                "rating": feedback.rating,
                "score": feedback.score,
                "comments": feedback.comments,
            },
        )
        if self._on_feedback_cb is not None:
            try:
                self._on_feedback_cb(feedback)
            except Exception:  # a user's callback must not take the link down
                _log.exception("on_feedback raised")

    # Attempts.

    def _on_assignment(self, assignment: link_pb2.TaskAssignment) -> None:
        attempt_id = assignment.attempt_id
        if attempt_id in self._running or attempt_id in self._pending:
            return  # a repeated lease; the attempt is already ours
        if self._draining or self._outbox.closed:
            self._outbox.release([attempt_id])
            return
        attempt = _Attempt(assignment, self._route(assignment))
        if len(self._running) < self._capacity:
            self._start(attempt)
        elif len(self._pending) < self._capacity:
            self._pending[attempt_id] = attempt
        else:
            _log.warning(
                "assignment beyond capacity; releasing it",
                extra={"task_id": assignment.task_id, "attempt_id": attempt_id},
            )
            self._outbox.release([attempt_id])
        self._update_idle()

    def _route(self, assignment: link_pb2.TaskAssignment) -> HandlerSpec | None:
        if assignment.action and assignment.action in self._by_action:
            return self._by_action[assignment.action]
        return self._default

    def _on_cancellation(self, cancellation: link_pb2.TaskCancellation) -> None:
        attempt_id = cancellation.attempt_id
        extra = {"task_id": cancellation.task_id, "attempt_id": attempt_id}
        if self._pending.pop(attempt_id, None) is not None:
            _log.info("cancelled before it started: %s", cancellation.reason, extra=extra)
            self._update_idle()
        elif (attempt := self._running.get(attempt_id)) is not None and attempt.stop is None:
            _log.info("cancelling: %s", cancellation.reason, extra=extra)
            self._stop_attempt(attempt, "cancelled")

    def _stop_attempt(self, attempt: _Attempt, why: Literal["cancelled", "released"]) -> None:
        attempt.stop = why
        if attempt.ctx is not None:
            attempt.ctx.cancelled.set()
        if attempt.task is not None:
            attempt.task.cancel()

    def _start(self, attempt: _Attempt) -> None:
        attempt.ctx = context_from_assignment(
            attempt.assignment,
            agent_id=self._agent_id,
            agent_name=self._name,
            reporter=self._attempt_reporter(attempt),
            memory=self._memory,
        )
        self._running[attempt.id] = attempt
        attempt.task = asyncio.create_task(
            self._execute(attempt), name=f"godel-attempt-{attempt.id}"
        )

    def _attempt_reporter(self, attempt: _Attempt) -> Reporter | None:
        if self._shipper is None:
            return self._reporter
        # An exec command's log lines are its stderr; say so in the sidecar's file.
        is_exec = attempt.spec is not None and isinstance(attempt.spec.fn, ExecHandler)
        return ShippingReporter(
            self._reporter,
            self._shipper,
            source="stderr" if is_exec else "task",
            attempt_id=attempt.id,
        )

    async def _execute(self, attempt: _Attempt) -> None:
        assert attempt.ctx is not None
        try:
            try:
                result = await self._outcome(attempt, attempt.ctx)
            except asyncio.CancelledError:
                if attempt.stop is None:
                    raise  # the agent itself is going away
                result = None
            # Queue before the slot is freed, so that a drain waiting for idleness
            # cannot close the outbox ahead of this attempt's last word.
            if attempt.stop == "released":
                self._outbox.release([attempt.id])
            elif attempt.stop is None and result is not None:
                self._outbox.add_result(result)
                _log.debug(
                    "attempt finished",
                    extra={
                        "task_id": attempt.ctx.task_id,
                        "attempt_id": attempt.id,
                        "outcome": result.error.code if result.HasField("error") else "OK",
                    },
                )
        finally:
            self._running.pop(attempt.id, None)
            self._fill_slots()
            self._update_idle()

    async def _outcome(self, attempt: _Attempt, ctx: TaskContext) -> link_pb2.TaskResult:
        if attempt.spec is None:
            what = f"action {ctx.action!r}" if ctx.action else f"role {ctx.role!r}"
            result = link_pb2.TaskResult(task_id=ctx.task_id, attempt_id=ctx.attempt_id)
            result.error.CopyFrom(
                task_pb2.TaskError(
                    code="NO_HANDLER",
                    message=f"this agent has no handler for {what}",
                    retryable=True,
                )
            )
            return result
        return await run_attempt(
            attempt.spec,
            ctx,
            max_result_bytes=self._max_message_bytes - MESSAGE_HEADROOM,
        )

    def _fill_slots(self) -> None:
        while self._pending and len(self._running) < self._capacity and not self._draining:
            _, attempt = self._pending.popitem(last=False)
            self._start(attempt)

    def _update_idle(self) -> None:
        if self._running or self._pending:
            self._idle.clear()
        else:
            self._idle.set()
