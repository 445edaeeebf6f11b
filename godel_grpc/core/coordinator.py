"""The coordinator's core: tasks, agents, leases, and their durable history.

Single-threaded on the asyncio loop. Every change is an event: it is applied to memory
at once (so dispatch never waits for a disk) and handed to the journal; commands answer
their callers only after their events are durable. Dispatch rounds run once per loop
iteration at most, leasing everything that became possible and sending each agent one
message with all its new assignments. Agents' links live in `agent_links`, lookups of
agents in `agent_directory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from godel_grpc import __version__
from godel_grpc._proto.godel.v1 import (
    agent_link_service_pb2 as link_pb2,
)
from godel_grpc._proto.godel.v1 import (
    event_pb2,
    task_pb2,
    task_service_pb2,
)
from godel_grpc.core import events
from godel_grpc.core.agent_directory import AgentDirectory
from godel_grpc.core.agent_history import AgentHistory
from godel_grpc.core.agent_links import AgentLinks
from godel_grpc.core.breakers import BreakerBook, ForcedCircuits
from godel_grpc.core.bulkheads import BulkheadManager
from godel_grpc.core.convoys import ConvoyManager
from godel_grpc.core.fields import copy_common_fields
from godel_grpc.core.journal import Journal
from godel_grpc.core.paging import NOT_A_TOKEN
from godel_grpc.core.pattern_host import PatternManager, SubmitOwned
from godel_grpc.core.pool_routing import role_and_action
from godel_grpc.core.queues import QueueManager
from godel_grpc.core.records import Task, TaskRecord, TaskState
from godel_grpc.core.reflex import ReflexManager
from godel_grpc.core.sagas import SagaManager
from godel_grpc.core.scheduler import Scheduler, gather_delay
from godel_grpc.core.state import CoordinatorState
from godel_grpc.core.swarms import SwarmManager
from godel_grpc.core.upgrade import decode
from godel_grpc.core.workflows import WorkflowManager
from godel_grpc.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from godel_grpc.metrics import CoordinatorMetrics
from godel_grpc.store.base import EventStore

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "coordinator"
MAX_RETRY_BACKOFF = 600.0
"""Seconds: the longest wait between attempts, however many have failed."""


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """Tunables of the core, all in seconds or counts."""

    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0
    snapshot_every: int = 50_000
    """Write a snapshot once this many events were recorded since the last one."""
    sweep_interval: float = 0.5
    """How often heartbeats and task deadlines are checked."""
    retention: int = 100_000
    """Ended tasks kept in memory; older ones are read back from the event log."""


class Coordinator:
    """Owns the coordinator's state and every change made to it."""

    def __init__(
        self,
        store: EventStore,
        metrics: CoordinatorMetrics,
        settings: CoordinatorSettings | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings or CoordinatorSettings()
        self.state = CoordinatorState(self.settings.retention)
        self._install_managers()
        self.scheduler = Scheduler()
        self.links = AgentLinks(self)
        """Agents' sessions: hellos, what they report, and the ends of their links."""
        self.breakers = BreakerBook(
            metrics.circuit_transitions,
            self.links.probe_due,
            self.links.circuit_changed,
        )
        self.journal = Journal(store, self._on_written, self._on_journal_failed)
        self.agent_history = AgentHistory(store)
        """Snapshots of event-sourced agents and ReplayAgent."""
        self.sessions = self.links.sessions
        """The links' own dict of open sessions (dispatch sends through them)."""
        self.directory = AgentDirectory(lambda: self.state, self.sessions)
        """Lookups and pages of agents (the query side)."""
        self.spawned_ids: dict[str, str] = {}
        """Name → id promised by SpawnAgent; the hello with that name gets that id."""
        self._queued_at: dict[str, float] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._watchers: dict[str, set[asyncio.Queue[task_pb2.Task | None]]] = {}
        self._end_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._dispatch_scheduled = False
        self._task_ids = itertools.count(1)
        self._attempt_ids = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self._events_since_snapshot = 0
        self._stopping = False
        self.lease_ended = asyncio.Event()
        """Set when a result or a release ends a lease (a drain waits on it)."""
        self.fatal: asyncio.Future[BaseException] | None = None
        metrics.watch_task_states(self._task_counts_by_name)
        # Read through `self` at scrape time: recovery may replace the managers.
        metrics.watch_pattern_states("convoy", lambda: self.convoys.counts_by_state())
        metrics.watch_pattern_states("saga", lambda: self.sagas.counts_by_state())
        metrics.watch_pattern_states("workflow", lambda: self.workflows.counts_by_state())
        metrics.watch_queues(lambda: self.queues.metric_rows())
        metrics.watch_bulkheads(lambda: self.bulkheads.metric_rows())
        metrics.watch_agent_samples(self.directory.sample_rows)
        metrics.watch_circuits(self.breakers.metric_rows)
        metrics.watch_swarms(lambda: self.swarms.metric_rows())

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuilds state from the latest snapshot plus later events, then starts serving."""
        self.fatal = asyncio.get_running_loop().create_future()
        await self.store.open()
        replayed = await self._recover()
        self.journal.start()
        epoch = self.state.epoch + 1
        recovery = [events.coordinator_started(epoch, __version__)]
        for task in self.state.tasks.values():
            if task.state == Task.STATE_RUNNING:
                recovery.append(
                    events.task_requeued(
                        task.id, task.attempt_id, task.agent_id, "coordinator restarted", lost=False
                    )
                )
                self.metrics.requeued.labels("restart").inc()
        self._apply_all(recovery)
        for manager in self.managers:
            manager.take_actions()  # decided during replay: the log shows what was done
            manager.reconcile([t.id for t in self.state.tasks.values() if not t.terminal])
        for task in self.state.tasks.values():
            if task.state == Task.STATE_QUEUED:
                self.enqueue(task)
            if task.deadline is not None and not task.terminal:
                heapq.heappush(self._deadlines, (task.deadline, task.id))
        self.journal.add(recovery)
        self.run_pattern_actions()
        await self.journal.flush()
        if replayed >= self.settings.snapshot_every // 10:
            await self._snapshot()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sweeper")
        log.info(
            "coordinator started",
            extra={"epoch": epoch, "replayed_events": replayed, "tasks": len(self.state.tasks)},
        )

    async def _recover(self) -> int:
        loaded = await self.store.load_snapshot(SNAPSHOT_NAME)
        if loaded is not None:
            snapshot = event_pb2.CoordinatorSnapshot.FromString(loaded[1])
            self.state = CoordinatorState.from_snapshot(snapshot, self.settings.retention)
            self._install_managers()
            for event in snapshot.pattern_events:
                for manager in self.managers:
                    manager.observe(event)
        replayed = 0
        position = self.state.position
        while True:
            batch = await self.store.read(after=position, limit=5000)
            if not batch:
                break
            for stored in batch:
                self.state.apply(decode(stored))
            position = batch[-1].position
            replayed += len(batch)
        return replayed

    async def stop(self, grace: float = 5.0) -> None:
        """Drains agents for up to `grace` seconds, snapshots, and flushes the log."""
        self._stopping = True
        for session in list(self.sessions.values()):
            session.send_drain()
            self.scheduler.remove_agent(session.agent_id)
        deadline = time.monotonic() + grace
        while any(s.leases for s in self.sessions.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.lease_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lease_ended.wait(), remaining)
        for session in list(self.sessions.values()):
            session.close("coordinator shutting down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for watchers in self._watchers.values():
            for queue in watchers:
                queue.put_nowait(None)
        for listener in list(self.state.agent_listeners):
            listener(None)  # WatchAgents streams end
        await self.journal.flush()
        if self.journal.idle and (self.fatal is None or not self.fatal.done()):
            await self._snapshot()
        await self.journal.close()
        await self.agent_history.close()
        await self.store.close()

    async def _snapshot(self) -> None:
        await self.journal.flush()
        position = await self.store.last_position()
        self.state.position = position
        snapshot = self.state.to_snapshot()
        for manager in self.managers:
            snapshot.pattern_events.extend(manager.history())
        await self.store.save_snapshot(SNAPSHOT_NAME, position, snapshot.SerializeToString())
        self._events_since_snapshot = 0

    def _on_written(self, count: int, seconds: float) -> None:
        self.metrics.append_seconds.observe(seconds)
        self.metrics.append_batch.observe(count)
        self._events_since_snapshot += count

    def _on_journal_failed(self, exc: BaseException) -> None:
        if self.fatal is not None and not self.fatal.done():
            self.fatal.set_result(exc)

    def _task_counts_by_name(self) -> dict[str, int]:
        return {
            TaskState.Name(state).removeprefix("STATE_").lower(): count  # type: ignore[arg-type]
            for state, count in self.state.task_counts.items()
            if state
        }

    # -- applying events ---------------------------------------------------------------

    def _apply_all(self, batch: Sequence[event_pb2.Event]) -> None:
        for event in batch:
            self.state.apply(event)

    def enqueue(self, task: TaskRecord) -> None:
        """Puts a queued task in line for an agent of its pool."""
        self._queued_at[task.id] = time.monotonic()
        self.scheduler.enqueue(task.id, task.pool, task.priority_rank)
        self.schedule_dispatch()

    def retry_later(self, task: TaskRecord) -> None:
        """Queues a task whose attempt failed again, after its retry backoff if it has one
        (doubling per failure, capped at 10 minutes). The wait is liveness: a restart
        queues it at once."""
        spec = task.spec
        if not spec.HasField("retry_backoff"):
            self.enqueue(task)
            return
        base = spec.retry_backoff.ToNanoseconds() / 1e9
        delay = min(MAX_RETRY_BACKOFF, base * 2 ** max(0, task.failures - 1))
        asyncio.get_running_loop().call_later(delay, self._enqueue_if_waiting, task.id)

    def _enqueue_if_waiting(self, task_id: str) -> None:
        task = self.state.tasks.get(task_id)
        if task is not None and task.state == Task.STATE_QUEUED and not self._stopping:
            self.enqueue(task)

    def schedule_dispatch(self) -> None:
        """Asks for a dispatch round at the next turn of the loop, or after
        `scheduler.gather_delay` while the fleet is busy (one round pending at most,
        however many changes ask for it)."""
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            loop = asyncio.get_running_loop()
            delay = gather_delay(self.state.task_counts[Task.STATE_RUNNING], len(self.sessions))
            if delay:
                loop.call_later(delay, self._dispatch)
            else:
                loop.call_soon(self._dispatch)

    def notify(self, task: TaskRecord) -> None:
        """Tells whoever follows the task that it changed: its watchers, its RunTask
        callers once it ended, and its pattern's duration metric."""
        if task.terminal and task.has_owner and task.start_time:
            outcome = Task.State.Name(task.state).removeprefix("STATE_").lower()
            owner = task.spec.owner
            self.metrics.part_seconds.labels(owner.pattern, owner.phase or "run", outcome).observe(
                max(0.0, task.end_time - task.start_time)
            )
        if task.terminal and task.id in self._end_waiters:
            for ended in self._end_waiters.pop(task.id):
                if not ended.done():
                    ended.set_result(None)
        watchers = self._watchers.get(task.id)
        if watchers:
            proto = task.to_proto()
            for queue in watchers:
                queue.put_nowait(proto)

    # -- tasks -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once shutdown began: watchers end, commands are refused."""
        return self._stopping

    def require_open(self) -> None:
        """Refuses commands once shutdown began (UNAVAILABLE)."""
        self._require_open()

    def _require_open(self) -> None:
        if self._stopping:
            raise Unavailable("the coordinator is shutting down; retry against its successor")

    async def submit_tasks(
        self, requests: Sequence[task_service_pb2.SubmitTaskRequest]
    ) -> list[task_pb2.Task]:
        """Accepts tasks and returns them once they are durable.

        A request whose idempotency key was seen before returns the task created first.
        """
        tasks, written = await self.admit_tasks(requests)
        if written is not None:
            await written
        return tasks

    async def admit_tasks(
        self, requests: Sequence[task_service_pb2.SubmitTaskRequest], *, urgent: bool = True
    ) -> tuple[list[task_pb2.Task], asyncio.Future[None] | None]:
        """Accepts tasks at once (applied and queued) and returns them with what resolves
        once they are durable, for a caller that answers later: SubmitTaskStream reads
        on while earlier tasks wait for their commit.

        Args:
            requests: the tasks to accept; a repeated idempotency key names the task
                created first.
            urgent: False lets new submissions ride with the next commit (at most
                `journal.LAZY_DELAY` later) and returns no future for them.

        Returns:
            The tasks in the order of the requests, and a future that resolves once
            they are durable (None when there is nothing to wait for).
        """
        self._require_open()
        now = time.time()
        violations = [
            FieldViolation(
                f"requests[{i}].deadline" if len(requests) > 1 else "deadline", "is in the past"
            )
            for i, request in enumerate(requests)
            if request.HasField("deadline") and request.deadline.ToNanoseconds() / 1e9 <= now
        ]
        if violations:
            raise InvalidArgument(violations)
        created: list[event_pb2.Event] = []
        result: list[task_pb2.Task] = []
        repeated = False
        for request in requests:
            key = request.idempotency_key
            existing = self.state.idempotency.get(key) if key else None
            if existing is not None:
                repeated = True
                known = self.state.tasks.get(existing)
                result.append(known.to_proto() if known else await self._existing_task(existing))
                continue
            event = self.accept_task(request)
            created.append(event)
            # The accepted task as recorded (QUEUED): later changes show in GetTask.
            result.append(event.task_submitted.task)
        if created:
            if urgent:
                return result, self.journal.record(created)  # commits in order: repeats' too
            self.journal.add(created, urgent=False)
        elif repeated and urgent:
            return result, asyncio.ensure_future(self.journal.flush())  # see `repeat_of`
        return result, None

    def repeat_of(self, idempotency_key: str) -> Coroutine[Any, Any, task_pb2.Task] | None:
        """What answers a submission with this key when the key was seen before: the
        task created first, once its submission is durable. None for an empty or new
        key, decided at once (no await on the path of a new task).

        The first submission may still be on its way to disk (a RunTask's rides with
        the next commit); answering a repeat before that would confirm a task that a
        crash could still lose.
        """
        task_id = self.state.idempotency.get(idempotency_key) if idempotency_key else None
        return None if task_id is None else self._durable_task(task_id)

    async def _durable_task(self, task_id: str) -> task_pb2.Task:
        await self.journal.flush()
        return await self.get_task(task_id)

    def new_task_id(self) -> str:
        """A fresh task id, for callers that must name a task before it is accepted
        (a backpressure queue's policy decides on the id first)."""
        return f"t-{self.state.epoch}-{next(self._task_ids)}"

    def accept_task(
        self,
        request: Message,
        owner: task_pb2.TaskOwner | None = None,
        *,
        task_id: str | None = None,
        shape: Callable[[task_pb2.Task], None] | None = None,
    ) -> event_pb2.Event:
        """Creates, applies and queues one task from a message carrying a task's fields;
        the caller journals the returned event (see `commit`).

        Args:
            request: any message with a task's fields by name.
            owner: the pattern resource the task belongs to, if any.
            task_id: an id from `new_task_id`; None makes one.
            shape: changes the spec before it is applied (a queue retargets it).
        """
        event = events.task_submitted_new(task_id or self.new_task_id())
        spec = event.task_submitted.task
        copy_common_fields(request, spec)
        if owner is not None:
            spec.owner.CopyFrom(owner)
        if shape is not None:
            shape(spec)
        self.state.apply(event)
        task = self.state.tasks[spec.id]
        self.enqueue(task)
        if task.deadline is not None:
            heapq.heappush(self._deadlines, (task.deadline, task.id))
        return event

    async def run_task(
        self, request: task_service_pb2.SubmitTaskRequest, wait_timeout: float | None = None
    ) -> task_pb2.Task:
        """Submits a task and returns it once it has ended and its ending is durable.

        The submission is not committed on its own: nobody is answered before the end,
        so it joins the commit of the task's result (or goes out after
        `journal.LAZY_DELAY` when the task runs longer). A quick task then costs one
        commit instead of two, and its result does not wait behind the first.
        A crash before that commit loses a task nobody was told about.

        Args:
            request: the task.
            wait_timeout: seconds to wait for the end; once they have passed the task is
                returned as it is then (not ended, but durable), and carries on. None
                waits as long as it takes.
        """
        (submitted,), _ = await self.admit_tasks([request], urgent=False)
        task = self.state.tasks.get(submitted.id)
        if task is None:  # ended long ago (an idempotent repeat)
            return await self._existing_task(submitted.id)
        if not task.terminal:
            ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._end_waiters.setdefault(task.id, []).append(ended)
            try:
                if wait_timeout is None:
                    await ended
                else:
                    with contextlib.suppress(TimeoutError):  # answered as it is, once durable
                        await asyncio.wait_for(ended, wait_timeout)
            finally:
                waiters = self._end_waiters.get(task.id)
                if waiters is not None and ended in waiters:
                    waiters.remove(ended)
                    if not waiters:
                        del self._end_waiters[task.id]
        await self.journal.flush()
        return task.to_proto()

    async def get_task(self, task_id: str) -> task_pb2.Task:
        """The task with this id, or NotFound."""
        task = self.state.tasks.get(task_id)
        if task is not None:
            return task.to_proto()
        return await self._existing_task(task_id)

    async def _existing_task(self, task_id: str) -> task_pb2.Task:
        """A task no longer in memory, rebuilt from its stream in the log."""
        recorded = await self.store.read(0, 10_000, stream=events.task_stream(task_id))
        if not recorded:
            raise NotFound("task", task_id)
        scratch = CoordinatorState(retention=1)
        for stored in recorded:
            scratch.apply(event_pb2.Event.FromString(stored.data))
        task = scratch.tasks.get(task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task.to_proto()

    def list_tasks(
        self, page_size: int, page_token: str, state: int
    ) -> tuple[list[task_pb2.Task], str]:
        """A page of the tasks in memory (everything in progress and the most recently
        ended), newest first; the token is the id of the last task of the previous page.

        For QUEUED or RUNNING the scan stops once it has passed every task in that state:
        they are all in memory and the state counts them, so "is anything queued?" does
        not walk the ended tasks kept besides (up to `retention`, 100,000 by default).
        """
        size = page_size or 100
        tasks = self.state.tasks
        ids = reversed(tasks)
        left: int | None = None  # tasks in that state not passed yet, for a state in progress
        if state and state not in _TERMINAL:
            left = self.state.task_counts[state]
        if page_token:
            if page_token not in tasks:
                raise InvalidArgument([FieldViolation("pageToken", NOT_A_TOKEN)])
            for task_id in ids:
                if left is not None and tasks[task_id].state == state:
                    left -= 1
                if task_id == page_token:
                    break
        page: list[task_pb2.Task] = []
        last = ""
        if left != 0:
            for task_id in ids:
                task = tasks[task_id]
                if not state or task.state == state:
                    page.append(task.to_proto())
                    last = task_id
                    if left is not None:
                        left -= 1
                    if len(page) == size or left == 0:
                        break
        if left is not None:
            more = len(page) == size and left > 0
        else:
            more = len(page) == size and any(not state or tasks[i].state == state for i in ids)
        return page, (last if more else "")

    async def cancel_task(self, task_id: str, reason: str) -> task_pb2.Task:
        """Cancels a queued or running task."""
        self._require_open()
        task = self.state.tasks.get(task_id)
        if task is None or task.terminal:
            ended = task.to_proto() if task is not None else await self._existing_task(task_id)
            raise FailedPrecondition(
                f"task {task_id!r} has already ended ({TaskState.Name(ended.state)})",
                subject=f"tasks/{task_id}",
            )
        done = self.journal.record([self._cancel(task, reason or "cancelled by caller")])
        self.run_pattern_actions()
        await done
        await self.journal.flush()
        return task.to_proto()

    def cancel_applied(self, task: TaskRecord, reason: str, code: str = "") -> event_pb2.Event:
        """Cancels a task that has not ended (applied now, journaled by the caller via
        `commit`); `code` replaces the error code "CANCELLED", e.g. "SHED"."""
        return self._cancel(task, reason, code)

    def _cancel(self, task: TaskRecord, reason: str, code: str = "") -> event_pb2.Event:
        """Applies the cancellation of a task that has not ended, telling its agent to
        stop; returns the event for the caller to journal."""
        was_running = task.state == Task.STATE_RUNNING
        agent_id, attempt_id = task.agent_id, task.attempt_id
        event = events.task_cancelled(task.id, reason, agent_id if was_running else "", code)
        self.state.apply(event)
        if was_running:
            self.end_lease(agent_id, attempt_id)
            session = self.sessions.get(agent_id)
            if session is not None:
                session.send_cancellation(task.id, attempt_id, reason)
        self.notify(task)
        return event

    # -- patterns ----------------------------------------------------------------------

    def _install_managers(self) -> None:
        """Binds fresh pattern managers to the current state."""
        self.convoys = ConvoyManager(self.state.tasks)
        self.sagas = SagaManager(self.state.tasks)
        self.queues = QueueManager(self.state.tasks)
        self.bulkheads = BulkheadManager(self.state.tasks)
        self.workflows = WorkflowManager()
        self.swarms = SwarmManager(self.state.tasks)
        self.reflex = ReflexManager(self.state.agents)
        self.forced_circuits = ForcedCircuits()
        self.managers: list[PatternManager] = [
            self.convoys,
            self.sagas,
            self.queues,
            self.bulkheads,
            self.workflows,
            self.swarms,
            self.reflex,
            self.forced_circuits,
        ]
        self.state.observers[:] = self.managers

    def run_pattern_actions(self) -> asyncio.Future[None] | None:
        """Carries out what pattern managers decided, until they decide nothing more;
        returns the future of the last journal write, if any."""
        done: asyncio.Future[None] | None = None
        while True:
            actions = [action for manager in self.managers for action in manager.take_actions()]
            if not actions:
                return done
            batch: list[event_pb2.Event] = []
            for action in actions:
                if isinstance(action, SubmitOwned):
                    batch.append(self.accept_task(action.request, action.owner))
                else:
                    task = self.state.tasks.get(action.task_id)
                    if task is not None and not task.terminal:
                        batch.append(self._cancel(task, action.reason))
            if batch:
                done = self.journal.record(batch)

    def record(self, batch: list[event_pb2.Event]) -> asyncio.Future[None]:
        """Applies and journals events, then carries out the pattern actions they caused;
        the future resolves once all of it is durable."""
        self._apply_all(batch)
        done = self.journal.record(batch)
        return self.run_pattern_actions() or done

    async def commit(self, applied: list[event_pb2.Event]) -> None:
        """Journals events already applied (accepted tasks, cancellations), carries out
        the pattern actions they caused, and returns once all of it is durable."""
        done = self.journal.record(applied)
        more = self.run_pattern_actions()
        await done
        if more is not None:
            await more

    async def watch_task(self, task_id: str) -> AsyncIterator[task_pb2.Task]:
        """The task now, then after each change, until it ends."""
        task = self.state.tasks.get(task_id)
        if task is None:
            yield await self._existing_task(task_id)
            return
        queue: asyncio.Queue[task_pb2.Task | None] = asyncio.Queue()
        watchers = self._watchers.setdefault(task_id, set())
        watchers.add(queue)
        try:
            current = task.to_proto()
            yield current
            while current.state not in _TERMINAL and not self._stopping:
                update = await queue.get()
                if update is None:
                    return
                current = update
                yield current
        finally:
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(task_id, None)

    # -- dispatch ----------------------------------------------------------------------

    def _is_ready(self, task_id: str) -> bool:
        task = self.state.tasks.get(task_id)
        return task is not None and task.state == Task.STATE_QUEUED

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self._stopping:
            return
        leases = self.scheduler.assign(self._is_ready, self.breakers.allow)
        if not leases:
            return
        epoch = self.state.epoch
        now = time.monotonic()
        batch: list[event_pb2.Event] = []
        per_agent: dict[str, list[link_pb2.TaskAssignment]] = {}
        for task_id, agent_id in leases:
            task = self.state.tasks[task_id]
            attempt_id = f"a-{epoch}-{next(self._attempt_ids)}"
            event = events.task_leased(task_id, attempt_id, task.attempts + 1, agent_id)
            self.state.apply(event)
            batch.append(event)
            self.sessions[agent_id].leases[attempt_id] = task_id
            assignment = _assignment(task)
            self.reflex.decorate(agent_id, assignment)
            per_agent.setdefault(agent_id, []).append(assignment)
            queued_at = self._queued_at.pop(task_id, None)
            if queued_at is not None:
                self.metrics.dispatch_seconds.observe(now - queued_at)
            self.notify(task)
        for agent_id, assignments in per_agent.items():
            self.sessions[agent_id].send_assignments(assignments)
        # Nobody waits on a lease: losing one in a crash only re-runs the attempt.
        self.journal.add(batch, urgent=False)

    def end_lease(self, agent_id: str, attempt_id: str) -> None:
        """Ends a lease whose attempt will not report (cancelled, past its deadline,
        released, or already over): its slot frees up, and so does the breaker's trial
        slot if it was a half-open trial."""
        session = self.sessions.get(agent_id)
        if session is not None and session.leases.pop(attempt_id, None) is not None:
            self.scheduler.release(agent_id)
            self.breakers.release(agent_id)
            self.schedule_dispatch()

    # -- background checks -------------------------------------------------------------

    async def _sweep(self) -> None:
        """Drops silent agents, fails overdue tasks, and snapshots when idle."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_seen > self.settings.heartbeat_timeout:
                    self.links.close_session(session, "heartbeat timeout")
            self._expire_deadlines(time.time())
            if self._events_since_snapshot >= self.settings.snapshot_every and self.journal.idle:
                await self._snapshot()

    def _expire_deadlines(self, now: float) -> None:
        batch: list[event_pb2.Event] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            task = self.state.tasks.get(task_id)
            if task is None or task.terminal:
                continue
            error = task_pb2.TaskError(
                code="DEADLINE_EXCEEDED", message="the task's deadline passed before it finished"
            )
            if task.state == Task.STATE_RUNNING:
                agent_id, attempt_id = task.agent_id, task.attempt_id
                event = events.task_attempt_failed(task_id, attempt_id, agent_id, error, final=True)
                self.state.apply(event)
                self.end_lease(agent_id, attempt_id)
                session = self.sessions.get(agent_id)
                if session is not None:
                    session.send_cancellation(task_id, attempt_id, "deadline exceeded")
            else:
                event = events.task_attempt_failed(task_id, task.attempt_id, "", error, final=True)
                self.state.apply(event)
            batch.append(event)
            self.notify(task)
        if batch:
            self.journal.add(batch)
            self.run_pattern_actions()


_TERMINAL = (Task.STATE_SUCCEEDED, Task.STATE_FAILED, Task.STATE_CANCELLED)


def _assignment(task: TaskRecord) -> link_pb2.TaskAssignment:
    spec = task.spec
    role, action = role_and_action(spec)
    assignment = link_pb2.TaskAssignment(
        task_id=task.id,
        attempt_id=task.attempt_id,
        attempt=task.attempts,
        title=spec.title,
        role=role,
        action=action,
        priority=spec.priority or "normal",
        idempotency_key=spec.idempotency_key or f"task:{task.id}",
    )
    if spec.labels:  # the map's generic update costs more than the rest when empty
        assignment.labels.update(spec.labels)
    if spec.HasField("payload"):
        assignment.payload.CopyFrom(spec.payload)
    if spec.HasField("timeout"):
        assignment.timeout.CopyFrom(spec.timeout)
    return assignment
