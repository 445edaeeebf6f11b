"""How pattern managers (convoys, sagas) plug into the coordinator's core.

A manager folds events like the core does: `observe` sees every event, live and during
recovery, and rebuilds its resources from them. What a manager wants done (run a task
for a convoy node, cancel one) it queues as actions; the coordinator takes them after
each live change and carries them out as ordinary task commands, whose events the
manager then observes in turn. During recovery the queued actions are dropped and
`reconcile` re-derives what is still missing, so a crash between a decision and its
task never loses or doubles the task.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2, task_service_pb2


@dataclass(frozen=True, slots=True)
class SubmitOwned:
    """Run a task for part of a pattern resource."""

    request: task_service_pb2.SubmitTaskRequest
    owner: task_pb2.TaskOwner


@dataclass(frozen=True, slots=True)
class CancelOwned:
    """Cancel a pattern resource's task that is no longer wanted."""

    task_id: str
    reason: str


PatternAction = SubmitOwned | CancelOwned


class PatternManager(Protocol):
    """What the coordinator needs from a pattern manager."""

    def observe(self, event: event_pb2.Event) -> None:
        """Folds one event (every event of the log passes here, in order)."""

    def take_actions(self) -> list[PatternAction]:
        """Actions queued since the last call."""

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """After recovery: queues the actions the log shows as decided but not done.

        Args:
            live_tasks: ids of tasks that exist and have not ended.
        """

    def history(self) -> list[event_pb2.Event]:
        """The events that built the resources kept in memory, in log order, for a
        snapshot; observing them again rebuilds those resources."""


def in_seen_order(histories: Iterable[list[tuple[int, event_pb2.Event]]]) -> list[event_pb2.Event]:
    """Merges per-resource histories of (order seen, event) into one list, in the order
    the manager saw them: live events have no log position yet, so `Event.id` cannot
    order a snapshot."""
    merged = [entry for history in histories for entry in history]
    return [event for _, event in sorted(merged, key=lambda entry: entry[0])]


def count_states(states: Iterable[enum.Enum]) -> dict[str, int]:
    """Resources by lower-case state name, for a pattern's state gauge."""
    return dict(Counter(state.name.lower() for state in states))
