"""Convoy commands and queries: validate, record the event, let the manager react.

Commands answer only once their events, and the tasks they started, are durable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import convoy_pb2, convoy_service_pb2, event_pb2
from godel_grpc.core import events
from godel_grpc.core.convoys import ConvoyManager, ConvoyRecord, policy_nodes
from godel_grpc.core.paging import page_of
from godel_grpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from godel_grpc.patterns import convoy as policy

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator


class ConvoyCommands:
    """The ConvoyService's behaviour, on top of the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._ids = itertools.count(1)

    @property
    def _manager(self) -> ConvoyManager:
        return self._coordinator.convoys

    def _get(self, convoy_id: str) -> ConvoyRecord:
        record = self._coordinator.convoys.convoys.get(convoy_id)
        if record is None:
            raise NotFound("convoy", convoy_id)
        return record

    def _require_agents(self, nodes: list[convoy_pb2.ConvoyNode]) -> None:
        """Fail fast: every role needs a connected agent now."""
        self._coordinator.directory.require_serving(roles=[node.role for node in nodes])

    async def create(self, request: convoy_service_pb2.CreateConvoyRequest) -> convoy_pb2.Convoy:
        """Validates the DAG and records the convoy, PENDING."""
        found = policy.validate_convoy(policy_nodes(request.agents))
        if found:
            raise InvalidArgument([FieldViolation(v.path, v.description) for v in found])
        if request.fail_fast:
            self._require_agents(list(request.agents))
        coordinator = self._coordinator
        convoy = convoy_pb2.Convoy(
            id=f"c-{coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            agents=request.agents,
            fail_fast=request.fail_fast,
            labels=request.labels,
        )
        event = events.convoy_created(convoy)
        await coordinator.record([event])
        return self._manager.to_proto(self._get(convoy.id))

    async def start(self, convoy_id: str) -> convoy_pb2.Convoy:
        """Dispatches every node without dependencies."""
        record = self._get(convoy_id)
        if record.run.state is not policy.ConvoyState.PENDING:
            raise FailedPrecondition(
                f"convoy {convoy_id!r} was already started ({record.run.state.name})",
                subject=f"convoys/{convoy_id}",
            )
        if record.convoy.fail_fast:
            self._require_agents(list(record.convoy.agents))
        await self._coordinator.record([events.convoy_started(convoy_id)])
        return self._manager.to_proto(record)

    def get(self, convoy_id: str) -> convoy_pb2.Convoy:
        return self._manager.to_proto(self._get(convoy_id))

    def list(
        self, page_size: int, page_token: str, state: int
    ) -> tuple[list[convoy_pb2.Convoy], str]:
        """Convoys, oldest first, optionally of one state."""
        return page_of(
            list(self._manager.convoys.values()),
            lambda record: record.convoy.id,
            self._manager.to_proto,
            page_size,
            page_token,
            (lambda convoy: convoy.state == state) if state else None,
        )

    async def cancel(self, convoy_id: str, reason: str) -> convoy_pb2.Convoy:
        """Cancels every node that has not ended, and their tasks."""
        record = self._get(convoy_id)
        if record.ended:
            raise FailedPrecondition(
                f"convoy {convoy_id!r} has already ended ({record.run.state.name})",
                subject=f"convoys/{convoy_id}",
            )
        await self._coordinator.record(
            [events.convoy_cancelled(convoy_id, reason or "cancelled by caller")]
        )
        return self._manager.to_proto(record)

    async def delete(self, convoy_id: str) -> None:
        """Cancels the convoy if it still runs, then forgets it."""
        record = self._get(convoy_id)
        batch: list[event_pb2.Event] = []
        if not record.ended:
            batch.append(events.convoy_cancelled(convoy_id, "deleted"))
        batch.append(events.convoy_deleted(convoy_id))
        await self._coordinator.record(batch)

    async def watch(self, convoy_id: str) -> AsyncIterator[convoy_pb2.Convoy]:
        """The convoy now, then after each change, until it ends."""
        record = self._get(convoy_id)
        changed = asyncio.Event()
        record.watchers.add(changed)
        try:
            while True:
                changed.clear()
                ended = record.ended  # decided before yielding: the end may come meanwhile
                yield self._manager.to_proto(record)
                if ended or self._coordinator.stopping:
                    return
                await changed.wait()
        finally:
            record.watchers.discard(changed)
