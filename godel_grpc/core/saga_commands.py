"""Saga commands and queries: validate, record the event, let the manager react.

Commands answer only once their events, and the tasks they started, are durable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from google.protobuf import struct_pb2

from godel_grpc._proto.godel.v1 import saga_pb2, saga_service_pb2
from godel_grpc.core import events
from godel_grpc.core.paging import page_of
from godel_grpc.core.sagas import SagaManager, SagaRecord, policy_steps
from godel_grpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from godel_grpc.patterns import saga as policy

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

_CANNOT_COMPENSATE = frozenset({policy.SagaState.RUNNING, policy.SagaState.COMPENSATING})
"""States in which the policy refuses `compensate()`: something is in flight."""
_NOTHING_TO_UNDO = frozenset({policy.SagaState.COMPENSATED, policy.SagaState.CANCELLED})
"""States in which `compensate()` is a no-op: the saga is returned as it is."""


class SagaCommands:
    """The SagaService's behaviour, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._ids = itertools.count(1)

    @property
    def _manager(self) -> SagaManager:
        return self._coordinator.sagas

    def _get(self, saga_id: str) -> SagaRecord:
        record = self._manager.sagas.get(saga_id)
        if record is None:
            raise NotFound("saga", saga_id)
        return record

    async def create(self, request: saga_service_pb2.CreateSagaRequest) -> saga_pb2.Saga:
        """Validates the steps and records the saga, PENDING."""
        found = policy.validate_saga(policy_steps(request.steps))
        if found:
            raise InvalidArgument([FieldViolation(v.path, v.description) for v in found])
        coordinator = self._coordinator
        if request.fail_fast:
            coordinator.directory.require_serving(actions=_actions_of(request.steps))
        saga = saga_pb2.Saga(
            id=f"s-{coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            labels=request.labels,
            fail_fast=request.fail_fast,
        )
        for step in request.steps:
            # Only the definition: output-only fields a caller sent are dropped.
            defined = saga.steps.add(name=step.name, action=step.action, compensate=step.compensate)
            if step.HasField("payload"):
                defined.payload.CopyFrom(step.payload)
            if step.HasField("retry"):
                defined.retry.CopyFrom(step.retry)
            if step.HasField("timeout"):
                defined.timeout.CopyFrom(step.timeout)
        await coordinator.record([events.saga_created(saga)])
        return self._manager.to_proto(self._get(saga.id))

    async def execute(
        self, saga_id: str, input: struct_pb2.Struct | None, manual_compensation: bool
    ) -> saga_pb2.Saga:
        """Runs the first step; the rest follow as each step succeeds."""
        record = self._get(saga_id)
        if record.run.state is not policy.SagaState.PENDING:
            raise FailedPrecondition(
                f"saga {saga_id!r} is {record.run.state.name}; only a PENDING saga can be executed",
                subject=f"sagas/{saga_id}",
            )
        if record.saga.fail_fast:
            self._coordinator.directory.require_serving(actions=_actions_of(record.saga.steps))
        await self._coordinator.record([events.saga_executed(saga_id, input, manual_compensation)])
        return self._manager.to_proto(record)

    async def compensate(self, saga_id: str, reason: str) -> saga_pb2.Saga:
        """Rolls the saga back by the policy's `compensate()` rules."""
        record = self._get(saga_id)
        state = record.run.state
        if state in _CANNOT_COMPENSATE:
            raise FailedPrecondition(
                f"saga {saga_id!r} is {state.name}; wait until it comes to rest before "
                "compensating",
                subject=f"sagas/{saga_id}",
            )
        if state not in _NOTHING_TO_UNDO:
            durable = self._coordinator.record(
                [events.saga_compensation_requested(saga_id, reason or "compensated by caller")]
            )
            # The reply shows the saga as the command left it (COMPENSATING): by the
            # time the write is durable, fast agents may already have undone it all.
            answer = self._manager.to_proto(record)
            await durable
            return answer
        return self._manager.to_proto(record)

    def get(self, saga_id: str) -> saga_pb2.Saga:
        return self._manager.to_proto(self._get(saga_id))

    def list(self, page_size: int, page_token: str, state: int) -> tuple[list[saga_pb2.Saga], str]:
        """Sagas, newest first, optionally of one state."""
        return page_of(
            list(reversed(self._manager.sagas.values())),
            lambda record: record.saga.id,
            self._manager.to_proto,
            page_size,
            page_token,
            (lambda saga: saga.state == state) if state else None,
        )

    async def delete(self, saga_id: str) -> None:
        """Forgets the saga; a task of it still in flight is cancelled, and no further
        compensation runs."""
        self._get(saga_id)
        await self._coordinator.record([events.saga_deleted(saga_id)])

    async def watch(self, saga_id: str) -> AsyncIterator[saga_pb2.Saga]:
        """The saga now, then after each change, until it comes to rest."""
        record = self._get(saga_id)
        changed = asyncio.Event()
        record.watchers.add(changed)
        try:
            while True:
                changed.clear()
                # Judged on the state sent: the saga may move on while the caller reads it.
                at_rest = record.at_rest
                yield self._manager.to_proto(record)
                if at_rest or self._coordinator.stopping:
                    return
                await changed.wait()
        finally:
            record.watchers.discard(changed)


def _actions_of(steps: Iterable[saga_pb2.SagaStep]) -> list[str]:
    """Every action a saga's steps may route to, forward and compensating."""
    return [name for step in steps for name in (step.action, step.compensate) if name]
