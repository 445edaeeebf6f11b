"""Backpressure queues over the core: one `BoundedQueue` policy per queue, fed by events.

A queue's tasks are ordinary tasks targeting the pool ``queue:NAME``; agents that name
the queue in their hello serve that pool. The policy (`patterns.backpressure`) decides
admission and pressure; this manager keeps it in step with what really happens to the
tasks by folding their events: a lease, a cancellation or a final failure takes the
task out of the policy, so depth is "accepted and not yet leased", never a guess.

Queue definitions are events (``queue.created`` / ``queue.deleted``). The policy's
contents are not: after recovery, `reconcile` re-offers every never-leased queued task
of each queue in creation order, which rebuilds depth and pressure exactly. Counters
(accepted, shed, ...) therefore count from the coordinator's start, like Prometheus
counters do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from godel_grpc._proto.godel.v1 import event_pb2, queue_pb2, task_pb2
from godel_grpc.core.pattern_host import PatternAction
from godel_grpc.core.records import TaskRecord
from godel_grpc.patterns.backpressure import BackpressureConfig, BoundedQueue, Priority

POOL_PREFIX = "queue:"


def policy_config(backpressure: queue_pb2.BackpressureConfig) -> BackpressureConfig:
    """The policy's config for a queue's proto config (zero values read as defaults)."""
    return BackpressureConfig.from_request(
        strategy=backpressure.strategy,
        max_size=backpressure.max_size,
        high_watermark=backpressure.high_watermark,
        low_watermark=backpressure.low_watermark,
    )


@dataclass
class QueueRecord:
    """One queue: its definition, its policy, and what the API shows beside them."""

    queue: queue_pb2.Queue
    created: event_pb2.Event
    policy: BoundedQueue
    open_tasks: dict[str, Priority] = field(default_factory=dict)
    """Tasks of the queue that have not ended (queued or leased), with their priority."""
    completed: dict[Priority, int] = field(default_factory=dict)
    failed: dict[Priority, int] = field(default_factory=dict)
    pressure_change_time: float = 0.0
    waiting_producers: int = 0
    deleted: bool = False
    room: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) whenever blocked producers may offer again; waiters take the
    current one, so a wake-up is never missed and never a poll."""

    @property
    def name(self) -> str:
        return self.queue.name

    def wake(self) -> None:
        """Lets every producer waiting on `room` re-check the queue."""
        room, self.room = self.room, asyncio.Event()
        room.set()

    def note_pressure(self, before: bool) -> None:
        """Stamps the pressure change time, and wakes blocked producers once it ends."""
        after = self.policy.pressure
        if after != before:
            self.pressure_change_time = time.time()
        if self.waiting_producers and self.policy.can_unblock():
            self.wake()


class QueueManager:
    """Every backpressure queue the coordinator knows, folded from events."""

    def __init__(self, tasks: dict[str, TaskRecord]) -> None:
        self._tasks = tasks
        self.queues: dict[str, QueueRecord] = {}
        self.by_name: dict[str, QueueRecord] = {}
        self._queue_of: dict[str, QueueRecord] = {}

    # -- folding ---------------------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        if not self.queues and not event.HasField("queue_created"):
            return  # the common case on the task hot path: nothing to fold into
        kind = event.WhichOneof("payload")
        if kind == "queue_created":
            queue = event.queue_created.queue
            record = QueueRecord(
                queue=queue,
                created=event,
                policy=BoundedQueue(policy_config(queue.backpressure)),
                pressure_change_time=event.time.ToNanoseconds() / 1e9,
            )
            self.queues[queue.id] = record
            self.by_name[queue.name] = record
        elif kind == "queue_deleted":
            gone = self.queues.pop(event.queue_deleted.queue_id, None)
            if gone is not None:
                self.by_name.pop(gone.name, None)
                gone.deleted = True
                gone.wake()
        elif kind == "task_submitted":
            spec = event.task_submitted.task
            if spec.WhichOneof("target") == "queue":
                owner = self.by_name.get(spec.queue)
                if owner is not None:
                    owner.open_tasks[spec.id] = Priority.parse(spec.priority)
                    self._queue_of[spec.id] = owner
        elif kind == "task_leased":
            self._left(event.task_leased.task_id)
        elif kind == "task_succeeded":
            self._ended(event.task_succeeded.task_id, "completed")
        elif kind == "task_attempt_failed":
            if event.task_attempt_failed.final:
                self._ended(event.task_attempt_failed.task_id, "failed")
        elif kind == "task_cancelled":
            self._ended(event.task_cancelled.task_id, "")

    def _left(self, task_id: str) -> None:
        """A task left the waiting line (leased, cancelled, expired): depth follows."""
        record = self._queue_of.get(task_id)
        if record is None:
            return
        before = record.policy.pressure
        if record.policy.remove(task_id):
            record.note_pressure(before)

    def _ended(self, task_id: str, outcome: str) -> None:
        self._left(task_id)
        record = self._queue_of.pop(task_id, None)
        if record is None:
            return
        priority = record.open_tasks.pop(task_id, Priority.NORMAL)
        if outcome == "completed":
            record.completed[priority] = record.completed.get(priority, 0) + 1
        elif outcome == "failed":
            record.failed[priority] = record.failed.get(priority, 0) + 1

    # -- the coordinator's side --------------------------------------------------------

    def take_actions(self) -> list[PatternAction]:
        """Queues decide nothing on their own: every change starts with a producer."""
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """After recovery: rebuilds each policy from the tasks still waiting, in order.

        Replay cannot rebuild the policies (refusals leave no event, and a snapshot
        holds no policy state), so they start afresh and every never-leased queued task
        is offered again in creation order: depth and pressure come out as they were.
        Tasks already leased once count as in flight, as they did before the restart.
        """
        self._queue_of.clear()
        for record in self.queues.values():
            record.policy = BoundedQueue(record.policy.config)
            record.open_tasks.clear()
            record.completed.clear()
            record.failed.clear()
        for task_id in live_tasks:
            task = self._tasks.get(task_id)
            if task is None or task.spec.WhichOneof("target") != "queue":
                continue
            owner = self.by_name.get(task.spec.queue)
            if owner is None:
                continue
            priority = Priority.parse(task.spec.priority)
            owner.open_tasks[task_id] = priority
            self._queue_of[task_id] = owner
            if task.state == task_pb2.Task.STATE_QUEUED and task.attempts == 0:
                owner.policy.offer(task_id, priority)
        for record in self.queues.values():
            record.pressure_change_time = time.time()

    def history(self) -> list[event_pb2.Event]:
        """The creation events of the queues that exist, oldest first."""
        return [record.created for record in self.queues.values()]

    # -- queries -----------------------------------------------------------------------

    def to_proto(self, record: QueueRecord) -> queue_pb2.Queue:
        """The queue as the API shows it: definition plus live depth and counters."""
        queue = queue_pb2.Queue()
        queue.CopyFrom(record.queue)
        policy = record.policy
        queue.depth = policy.depth
        queue.pressure = policy.pressure
        queue.in_flight = len(record.open_tasks) - policy.depth
        queue.waiting_producers = record.waiting_producers
        overall = policy.counts()
        queue.counts.CopyFrom(
            queue_pb2.QueueCounts(
                accepted=overall.accepted,
                shed=overall.dropped,
                rejected=overall.rejected,
                completed=sum(record.completed.values()),
                failed=sum(record.failed.values()),
            )
        )
        for priority in Priority:
            counts = policy.counts(priority)
            queue.priority_counts[priority.label].CopyFrom(
                queue_pb2.QueueCounts(
                    accepted=counts.accepted,
                    shed=counts.dropped,
                    rejected=counts.rejected,
                    completed=record.completed.get(priority, 0),
                    failed=record.failed.get(priority, 0),
                )
            )
        queue.pressure_change_time.FromNanoseconds(int(record.pressure_change_time * 1e9))
        return queue

    def metric_rows(self) -> Iterator[tuple[str, int, bool, dict[tuple[str, str], int]]]:
        """(queue name, depth, pressure, {(priority, outcome): tasks}) per queue, for
        the metrics; every priority and outcome has a series, zeros included."""
        for record in self.queues.values():
            outcomes: dict[tuple[str, str], int] = {}
            for priority in Priority:
                counts = record.policy.counts(priority)
                outcomes[priority.label, "accepted"] = counts.accepted
                outcomes[priority.label, "shed"] = counts.dropped
                outcomes[priority.label, "rejected"] = counts.rejected
            yield record.name, record.policy.depth, record.policy.pressure, outcomes
