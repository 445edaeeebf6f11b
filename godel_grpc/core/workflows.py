"""Workflows as the core keeps them: folded from their events, watched by callers.

A workflow changes a few times per stage, so each change records the whole workflow
("workflow.changed") and folding is taking the latest one. What drives a workflow
forward (starting stages, undoing them) lives in `workflow_commands`; this manager
only remembers and tells watchers, and decides nothing on its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from godel_grpc._proto.godel.v1 import event_pb2, workflow_pb2
from godel_grpc.core.pattern_host import PatternAction


@dataclass
class WorkflowRecord:
    """One workflow: the latest version of it and the event that recorded it."""

    workflow: workflow_pb2.Workflow
    event: event_pb2.Event
    watchers: set[asyncio.Event] = field(default_factory=set)
    deleted: bool = False

    @property
    def ended(self) -> bool:
        return self.workflow.state in ENDED

    def notify(self) -> None:
        for changed in self.watchers:
            changed.set()


ENDED = frozenset(
    {
        workflow_pb2.Workflow.STATE_SUCCEEDED,
        workflow_pb2.Workflow.STATE_FAILED,
        workflow_pb2.Workflow.STATE_CANCELLED,
    }
)


class WorkflowManager:
    """Every workflow the coordinator knows, by id, in creation order."""

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowRecord] = {}

    def observe(self, event: event_pb2.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind == "workflow_created" or kind == "workflow_changed":
            workflow = getattr(event, kind).workflow
            record = self.workflows.get(workflow.id)
            if record is None:
                self.workflows[workflow.id] = WorkflowRecord(workflow, event)
            else:
                record.workflow, record.event = workflow, event
                record.notify()
        elif kind == "workflow_deleted":
            gone = self.workflows.pop(event.workflow_deleted.workflow_id, None)
            if gone is not None:
                gone.deleted = True
                gone.notify()

    def take_actions(self) -> list[PatternAction]:
        """Workflows act through their commands, not through queued actions."""
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """Nothing to re-derive: running workflows are resumed by their commands."""

    def history(self) -> list[event_pb2.Event]:
        """The latest event of each workflow; observing them rebuilds every workflow."""
        return [record.event for record in self.workflows.values()]

    def counts_by_state(self) -> dict[str, int]:
        """Workflows by lower-case state name, for the state gauge."""
        return dict(
            Counter(
                workflow_pb2.Workflow.State.Name(record.workflow.state)
                .removeprefix("STATE_")
                .lower()
                for record in self.workflows.values()
            )
        )
