"""QueueService's behaviour: create queues and admit tasks through their policy.

Admission is decided by the queue's `BoundedQueue` and carried out by the core: an
accepted task becomes an ordinary task targeting ``queue:NAME`` (durable before the
reply, like SubmitTask); tasks the admission evicts are cancelled with the error code
``SHED`` through the normal cancel path, so each has an event with its reason; refused
newcomers are counted by the policy and answered RESOURCE_EXHAUSTED with a retry
delay. A "block" queue holds the producer on an `asyncio.Event` that is set when the
pressure ends, bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import (
    event_pb2,
    queue_pb2,
    queue_service_pb2,
    task_pb2,
)
from godel_grpc.core import events, pool_routing
from godel_grpc.core.paging import page_of
from godel_grpc.core.pool_routing import carry_target
from godel_grpc.core.queues import (
    QueueManager,
    QueueRecord,
    policy_config,
)
from godel_grpc.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from godel_grpc.patterns.backpressure import Outcome, Priority, validate_backpressure

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

EnqueueMessage = queue_service_pb2.EnqueueRequest | queue_service_pb2.EnqueueStreamRequest
"""Both carry the queue id beside a task's fields."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """What became of one enqueued task.

    Attributes:
        outcome: ACCEPTED, SHED or REJECTED (WAIT is resolved before this is made).
        task: the accepted task as recorded; None unless accepted.
        pressure: the queue's pressure after the decision.
        depth: tasks waiting in the queue after the decision.
        retry_after: for refusals, seconds the producer should wait before retrying.
        message: for refusals, why in words.
    """

    outcome: Outcome
    task: task_pb2.Task | None
    pressure: bool
    depth: int
    retry_after: float | None = None
    message: str = ""


class QueueCommands:
    """The QueueService's behaviour, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._ids = itertools.count(1)

    @property
    def _manager(self) -> QueueManager:
        return self._coordinator.queues

    def _get(self, queue_id: str) -> QueueRecord:
        record = self._manager.queues.get(queue_id)
        if record is None:
            raise NotFound("queue", queue_id)
        return record

    # -- definitions -------------------------------------------------------------------

    async def create(self, request: queue_service_pb2.CreateQueueRequest) -> queue_pb2.Queue:
        """Validates the backpressure block and records the queue, defaults filled in."""
        given = request.backpressure
        found = validate_backpressure(
            strategy=given.strategy,
            max_size=given.max_size,
            high_watermark=given.high_watermark,
            low_watermark=given.low_watermark,
        )
        if found:
            raise InvalidArgument([FieldViolation(v.path, v.description) for v in found])
        if request.name in self._manager.by_name:
            raise AlreadyExists(f"a queue named {request.name!r} already exists")
        coordinator = self._coordinator
        coordinator.require_open()
        config = policy_config(given)
        queue = queue_pb2.Queue(
            id=f"q-{coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            role=request.role,
            labels=request.labels,
            backpressure=queue_pb2.BackpressureConfig(
                strategy=config.strategy.value,
                max_size=config.max_size,
                high_watermark=config.high_watermark,
                low_watermark=config.low_watermark,
            ),
        )
        await coordinator.record([events.queue_created(queue)])
        return self.get(queue.id)

    def get(self, queue_id: str) -> queue_pb2.Queue:
        return self._manager.to_proto(self._get(queue_id))

    def list(self, page_size: int, page_token: str) -> tuple[list[queue_pb2.Queue], str]:
        """Queues, oldest first."""
        return page_of(
            list(self._manager.queues.values()),
            lambda record: record.queue.id,
            self._manager.to_proto,
            page_size,
            page_token,
        )

    async def delete(self, queue_id: str) -> None:
        """Cancels the queue's waiting tasks, then forgets the queue; blocked producers
        wake to NOT_FOUND. Leased tasks finish."""
        record = self._get(queue_id)
        coordinator = self._coordinator
        batch: list[event_pb2.Event] = []
        for task_id in list(record.policy):
            task = coordinator.state.tasks.get(task_id)
            if task is not None and not task.terminal:
                batch.append(coordinator.cancel_applied(task, f"queue {record.name} deleted"))
        deleted = events.queue_deleted(queue_id)
        coordinator.state.apply(deleted)
        batch.append(deleted)
        await coordinator.commit(batch)

    # -- admission ---------------------------------------------------------------------

    def queue_for(self, queue_id: str) -> QueueRecord:
        """The queue with this id, or NotFound."""
        return self._get(queue_id)

    async def admit(
        self, record: QueueRecord, request: EnqueueMessage, wait_until: float | None
    ) -> Admitted:
        """Offers one task to the queue, carries out the verdict, and returns once what
        it changed is durable. See `admit_pending`."""
        admitted, durable = await self.admit_pending(record, request, wait_until)
        if durable is not None:
            await durable
        return admitted

    async def admit_pending(
        self, record: QueueRecord, request: EnqueueMessage, wait_until: float | None
    ) -> tuple[Admitted, Awaitable[object] | None]:
        """Offers one task to the queue and carries out the verdict in memory, without
        waiting for the event log.

        The verdict is final at once (later offers see it), but the caller must await
        the returned awaitable (None when nothing was recorded) before telling the
        producer: that is how a stream of offers shares one commit (group commit)
        while every ack still means durable.

        Args:
            record: the queue.
            request: the task's fields.
            wait_until: `loop.time()` past which a "block" queue stops waiting; None
                waits as long as it takes.

        Raises:
            InvalidArgument: a malformed task (nothing is counted).
            NotFound: the queue was deleted while the producer waited.
            DeadlineExceeded: a "block" queue stayed full until `wait_until`; the
                policy counted the task as rejected.
        """
        coordinator = self._coordinator
        coordinator.require_open()
        if request.HasField("deadline") and request.deadline.ToNanoseconds() / 1e9 <= time.time():
            raise InvalidArgument([FieldViolation("deadline", "is in the past")])
        policy = record.policy
        repeat = coordinator.repeat_of(request.idempotency_key)
        if repeat is not None:
            task = await repeat
            return Admitted(Outcome.ACCEPTED, task, policy.pressure, policy.depth), None
        priority = Priority.parse(request.priority)
        if request.HasField("deadline"):
            by_task = asyncio.get_running_loop().time() + (
                request.deadline.ToNanoseconds() / 1e9 - time.time()
            )
            wait_until = by_task if wait_until is None else min(wait_until, by_task)
        task_id = coordinator.new_task_id()
        while True:
            if record.deleted:
                raise NotFound("queue", record.queue.id)
            before = policy.pressure
            admission = policy.offer(task_id, priority)
            record.note_pressure(before)
            if admission.outcome is not Outcome.WAIT:
                break
            await self._wait_for_room(record, priority, wait_until)
        retry_after = admission.retry_after or policy.config.retry_after
        if admission.outcome is Outcome.SHED:
            return Admitted(
                Outcome.SHED,
                None,
                admission.pressure,
                admission.depth,
                retry_after,
                f"queue {record.name} is full and holds nothing of lower priority than "
                f"{priority.label}: the task was shed",
            ), None
        if admission.outcome is Outcome.REJECTED:
            return Admitted(
                Outcome.REJECTED,
                None,
                admission.pressure,
                admission.depth,
                retry_after,
                f"queue {record.name} is full ({policy.config.max_size} tasks)",
            ), None
        batch: list[event_pb2.Event] = []
        for victim_id, reason in admission.evicted:
            victim = coordinator.state.tasks.get(victim_id)
            if victim is not None and not victim.terminal:
                batch.append(coordinator.cancel_applied(victim, reason.value, code="SHED"))
        event = coordinator.accept_task(
            request, task_id=task_id, shape=lambda spec: _route(spec, record)
        )
        batch.append(event)
        durable = coordinator.journal.record(batch)
        more = coordinator.run_pattern_actions()
        admitted = Admitted(
            Outcome.ACCEPTED, event.task_submitted.task, policy.pressure, policy.depth
        )
        return admitted, (durable if more is None else asyncio.gather(durable, more))

    async def _wait_for_room(
        self, record: QueueRecord, priority: Priority, wait_until: float | None
    ) -> None:
        """Waits until the queue's pressure ends (or it is deleted); past `wait_until`
        counts the task as rejected and raises DeadlineExceeded."""
        loop = asyncio.get_running_loop()
        record.waiting_producers += 1
        try:
            while not record.policy.can_unblock() and not record.deleted:
                room = record.room
                timeout = None if wait_until is None else wait_until - loop.time()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                await asyncio.wait_for(room.wait(), timeout)
        except TimeoutError:
            record.policy.give_up(priority)
            raise DeadlineExceeded(
                f"queue {record.name} stayed full until the deadline; the task was not enqueued",
                reason="QUEUE_FULL",
            ) from None
        except asyncio.CancelledError:
            record.policy.give_up(priority)  # the caller went away: still counted
            raise
        finally:
            record.waiting_producers -= 1

    async def enqueue(
        self, request: queue_service_pb2.EnqueueRequest, time_remaining: float | None
    ) -> queue_service_pb2.EnqueueResponse:
        """Enqueue: accepted tasks come back durable; refusals become RESOURCE_EXHAUSTED."""
        record = self._get(request.queue_id)
        wait_until = None
        if time_remaining is not None:
            # Answer just before the caller's deadline, so it hears why.
            wait_until = asyncio.get_running_loop().time() + max(0.0, time_remaining - 0.05)
        admitted = await self.admit(record, request, wait_until)
        if admitted.task is None:
            raise ResourceExhausted(
                admitted.message,
                subject=f"queues/{record.queue.id}",
                retry_after=admitted.retry_after,
                reason="QUEUE_FULL",
            )
        return queue_service_pb2.EnqueueResponse(
            task=admitted.task, pressure=admitted.pressure, depth=admitted.depth
        )


def _route(spec: task_pb2.Task, record: QueueRecord) -> None:
    """Targets a new task at its queue's pool (see `pool_routing`)."""
    carry_target(spec, pool_routing.QUEUE, record.queue.role)
    spec.queue = record.name
