"""BulkheadService's behaviour: create bulkheads and admit tasks to their partitions.

Admission is the policy's (`patterns.bulkhead`), carried out by the core: a task that
fits becomes an ordinary task targeting ``partition:BULKHEAD/PARTITION``, durable before
the reply like SubmitTask; one that does not is counted as rejected and answered
RESOURCE_EXHAUSTED naming the partition, so the caller knows which neighbour it can
still use. The slot itself is taken when the manager folds the task's submission,
which is the same code path replay takes, so live and recovered counts agree.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import (
    bulkhead_pb2,
    bulkhead_service_pb2,
    event_pb2,
    task_pb2,
)
from godel_grpc.core import events, pool_routing
from godel_grpc.core.bulkheads import (
    BulkheadManager,
    BulkheadRecord,
    partition_subject,
)
from godel_grpc.core.paging import page_of
from godel_grpc.core.pool_routing import carry_target
from godel_grpc.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from godel_grpc.patterns.bulkhead import (
    PartitionSpec,
    Refused,
    validate_partitions,
)

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

RETRY_AFTER = 1.0
"""Seconds a refused submitter is told to wait: a partition frees slots as its tasks end,
which for typical agent work takes about that long."""


class BulkheadCommands:
    """The BulkheadService's behaviour, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._ids = itertools.count(1)

    @property
    def _manager(self) -> BulkheadManager:
        return self._coordinator.bulkheads

    def _get(self, bulkhead_id: str) -> BulkheadRecord:
        record = self._manager.bulkheads.get(bulkhead_id)
        if record is None:
            raise NotFound("bulkhead", bulkhead_id)
        return record

    # -- definitions -------------------------------------------------------------------

    async def create(
        self, request: bulkhead_service_pb2.CreateBulkheadRequest
    ) -> bulkhead_pb2.Bulkhead:
        """Validates the partitions and records the bulkhead (each partition's role
        defaults to its name)."""
        specs = [
            PartitionSpec(p.name, max_agents=p.max_agents, max_tasks=p.max_tasks)
            for p in request.partitions
        ]
        found = validate_partitions(specs)
        if found:
            raise InvalidArgument([FieldViolation(v.path, v.description) for v in found])
        if request.name in self._manager.by_name:
            raise AlreadyExists(f"a bulkhead named {request.name!r} already exists")
        coordinator = self._coordinator
        coordinator.require_open()
        bulkhead = bulkhead_pb2.Bulkhead(
            id=f"bh-{coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            labels=request.labels,
            partitions=[
                # Only the definition: counters given by a caller mean nothing here.
                bulkhead_pb2.BulkheadPartition(
                    name=p.name,
                    max_agents=p.max_agents,
                    max_tasks=p.max_tasks,
                    role=p.role or p.name,
                )
                for p in request.partitions
            ],
        )
        await coordinator.record([events.bulkhead_created(bulkhead)])
        return self.get(bulkhead.id)

    def get(self, bulkhead_id: str) -> bulkhead_pb2.Bulkhead:
        return self._manager.to_proto(self._get(bulkhead_id))

    def list(self, page_size: int, page_token: str) -> tuple[list[bulkhead_pb2.Bulkhead], str]:
        """Bulkheads, oldest first."""
        return page_of(
            list(self._manager.bulkheads.values()),
            lambda record: record.bulkhead.id,
            self._manager.to_proto,
            page_size,
            page_token,
        )

    async def delete(self, bulkhead_id: str) -> None:
        """Cancels the bulkhead's waiting tasks, forgets it, and gives its agents back
        their ordinary pools; running tasks finish."""
        record = self._get(bulkhead_id)
        coordinator = self._coordinator
        coordinator.require_open()
        batch: list[event_pb2.Event] = []
        for task_id in self._manager.queued_task_ids(record):
            task = coordinator.state.tasks.get(task_id)
            if task is not None and not task.terminal:
                batch.append(coordinator.cancel_applied(task, f"bulkhead {record.name} deleted"))
        deleted = events.bulkhead_deleted(bulkhead_id)
        coordinator.state.apply(deleted)
        batch.append(deleted)
        for agent_id in self._manager.release(record):
            coordinator.links.refresh_pools(agent_id)
        await coordinator.commit(batch)

    # -- admission ---------------------------------------------------------------------

    async def submit(self, request: bulkhead_service_pb2.SubmitToPartitionRequest) -> task_pb2.Task:
        """Admits one task to one partition, or refuses it naming the partition.

        Raises:
            NotFound: unknown bulkhead or partition.
            InvalidArgument: a deadline in the past (nothing is counted).
            ResourceExhausted: the partition holds `max_tasks` tasks; counted as rejected.
        """
        coordinator = self._coordinator
        coordinator.require_open()
        record = self._get(request.bulkhead_id)
        partition = request.partition
        if partition not in record.policy.names:
            raise NotFound("partition", f"{record.name}/{partition}")
        if request.HasField("deadline") and request.deadline.ToNanoseconds() / 1e9 <= time.time():
            raise InvalidArgument([FieldViolation("deadline", "is in the past")])
        repeat = coordinator.repeat_of(request.idempotency_key)
        if repeat is not None:
            return await repeat
        if not record.policy.has_room(partition):
            refused = record.policy.admit(partition)  # counts the rejection
            assert isinstance(refused, Refused)
            raise ResourceExhausted(
                refused.reason,
                subject=partition_subject(record.name, partition),
                retry_after=RETRY_AFTER,
                reason="PARTITION_FULL",
            )
        spec = record.bulkhead.partitions[record.policy.names.index(partition)]
        # The manager takes the slot when it folds this submission (see module doc).
        event = coordinator.accept_task(
            request, shape=lambda task: _route(task, record, partition, spec.role)
        )
        await coordinator.commit([event])
        return event.task_submitted.task


def _route(spec: task_pb2.Task, record: BulkheadRecord, partition: str, role: str) -> None:
    """Targets a new task at its partition's pool (see `pool_routing`)."""
    carry_target(spec, pool_routing.PARTITION, role)
    spec.partition = f"{record.name}/{partition}"
