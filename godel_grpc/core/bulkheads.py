"""Bulkheads over the core: one `Bulkhead` policy per bulkhead, fed by task events.

A partition's tasks are ordinary tasks targeting the pool
``partition:BULKHEAD/PARTITION``; only agents that joined that partition serve the pool,
and an agent that joined partitions serves nothing else. So each partition has its own
queue (its pool in the scheduler) and its own dispatch capacity (its agents' slots):
a flooded or hanging partition fills only those, never a neighbour's.

The policy (`patterns.bulkhead`) counts task slots and agents. This manager keeps its
counts true by folding what really happens to each partition task: a lease starts it,
a lost lease or a failed attempt that will be retried returns it to the queue, an end
finishes it, a cancellation drops it. It tracks every task it counted, so a task it
never counted (one from before a snapshot) never touches the policy; `reconcile`
rebuilds every policy from the live tasks after recovery. Like queue counters, the
rejected/completed/failed counters therefore count from the coordinator's start.

Agent membership is not an event: it lives as long as the agent's link, and the
coordinator asks `join` at hello and `leave` at disconnect.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from godel_grpc._proto.godel.v1 import bulkhead_pb2, event_pb2, task_pb2
from godel_grpc.core.pattern_host import PatternAction
from godel_grpc.core.records import TaskRecord
from godel_grpc.errors import FailedPrecondition, FieldViolation, InvalidArgument
from godel_grpc.patterns.bulkhead import Admitted, Bulkhead, PartitionSpec, UnknownPartition

POOL_PREFIX = "partition:"


def partition_subject(bulkhead: str, partition: str) -> str:
    """The resource name errors use for a partition, e.g.
    ``bulkheads/service-isolation/partitions/analytics``."""
    return f"bulkheads/{bulkhead}/partitions/{partition}"


def specs_of(bulkhead: bulkhead_pb2.Bulkhead) -> list[PartitionSpec]:
    """The policy's partition definitions for a bulkhead's proto."""
    return [
        PartitionSpec(p.name, max_agents=p.max_agents, max_tasks=p.max_tasks)
        for p in bulkhead.partitions
    ]


@dataclass
class BulkheadRecord:
    """One bulkhead: its definition (as created), its policy, and its creation event."""

    bulkhead: bulkhead_pb2.Bulkhead
    created: event_pb2.Event
    policy: Bulkhead
    deleted: bool = False

    @property
    def name(self) -> str:
        return self.bulkhead.name

    def pool(self, partition: str) -> str:
        """The scheduler pool of one of its partitions."""
        return f"{POOL_PREFIX}{self.name}/{partition}"


@dataclass(slots=True)
class _Slot:
    """A partition task the policy counted, and whether it counts as running."""

    record: BulkheadRecord
    partition: str
    running: bool = False


class BulkheadManager:
    """Every bulkhead the coordinator knows, folded from events, plus agent membership."""

    def __init__(self, tasks: dict[str, TaskRecord]) -> None:
        self._tasks = tasks
        self.bulkheads: dict[str, BulkheadRecord] = {}
        self.by_name: dict[str, BulkheadRecord] = {}
        self._slots: dict[str, _Slot] = {}
        self._memberships: dict[str, list[tuple[BulkheadRecord, str]]] = {}

    # -- folding ---------------------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        if not self.bulkheads and not event.HasField("bulkhead_created"):
            return  # the common case on the task hot path: nothing to fold into
        kind = event.WhichOneof("payload")
        if kind == "bulkhead_created":
            bulkhead = event.bulkhead_created.bulkhead
            record = BulkheadRecord(bulkhead, event, Bulkhead(specs_of(bulkhead)))
            self.bulkheads[bulkhead.id] = record
            self.by_name[bulkhead.name] = record
        elif kind == "bulkhead_deleted":
            gone = self.bulkheads.pop(event.bulkhead_deleted.bulkhead_id, None)
            if gone is not None:
                self.by_name.pop(gone.name, None)
                gone.deleted = True
        elif kind == "task_submitted":
            spec = event.task_submitted.task
            if spec.WhichOneof("target") == "partition":
                self._admitted(spec)
        elif kind == "task_leased":
            slot = self._slots.get(event.task_leased.task_id)
            if slot is not None and not slot.running:
                slot.record.policy.task_started(slot.partition)
                slot.running = True
        elif kind == "task_succeeded":
            self._ended(event.task_succeeded.task_id, failed=False)
        elif kind == "task_attempt_failed":
            failed = event.task_attempt_failed
            if failed.final:
                self._ended(failed.task_id, failed=True)
            else:
                self._returned(failed.task_id)
        elif kind == "task_requeued":
            self._returned(event.task_requeued.task_id)
        elif kind == "task_cancelled":
            slot = self._slots.pop(event.task_cancelled.task_id, None)
            if slot is not None:
                slot.record.policy.task_dropped(slot.partition, running=slot.running)

    def _admitted(self, spec: task_pb2.Task) -> None:
        """Counts a new partition task. Live, the service checked `has_room` just before,
        so this admits; in replay the log repeats the same admissions in order."""
        bulkhead, _, partition = spec.partition.partition("/")
        record = self.by_name.get(bulkhead)
        if record is None:
            return
        try:
            verdict = record.policy.admit(partition)
        except UnknownPartition:
            return
        if isinstance(verdict, Admitted):
            self._slots[spec.id] = _Slot(record, partition)

    def _returned(self, task_id: str) -> None:
        """A running task went back to its partition's queue; its slot stays taken."""
        slot = self._slots.get(task_id)
        if slot is not None and slot.running:
            slot.record.policy.task_returned(slot.partition)
            slot.running = False

    def _ended(self, task_id: str, *, failed: bool) -> None:
        slot = self._slots.pop(task_id, None)
        if slot is None:
            return
        policy = slot.record.policy
        if not slot.running:
            # A queued task can end too (its deadline passed before any lease): it
            # still failed, and its slot is freed like any other.
            policy.task_started(slot.partition)
        policy.task_finished(slot.partition, failed)

    # -- the coordinator's side --------------------------------------------------------

    def take_actions(self) -> list[PatternAction]:
        """Bulkheads decide nothing on their own: every change starts with a submit."""
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """After recovery: rebuilds each policy from the partition tasks still live.

        A snapshot holds no policy state and refusals leave no event, so every policy
        starts afresh and each live partition task takes its slot again (leased ones
        as running). The limits never shrink, so every one of them fits.
        """
        self._slots.clear()
        for record in self.bulkheads.values():
            record.policy = Bulkhead(specs_of(record.bulkhead))
        for task_id in live_tasks:
            task = self._tasks.get(task_id)
            if task is None or task.spec.WhichOneof("target") != "partition":
                continue
            self._admitted(task.spec)
            slot = self._slots.get(task_id)
            if slot is not None and task.state == task_pb2.Task.STATE_RUNNING:
                slot.record.policy.task_started(slot.partition)
                slot.running = True

    def history(self) -> list[event_pb2.Event]:
        """The creation events of the bulkheads that exist, oldest first."""
        return [record.created for record in self.bulkheads.values()]

    def queued_task_ids(self, record: BulkheadRecord) -> list[str]:
        """Ids of the bulkhead's counted tasks that are waiting, not running."""
        return [
            task_id
            for task_id, slot in self._slots.items()
            if slot.record is record and not slot.running
        ]

    # -- agents ------------------------------------------------------------------------

    def join(self, agent_id: str, partitions: Sequence[str]) -> list[str]:
        """Lets an agent serve every partition its hello names, or none of them.

        Args:
            agent_id: the agent.
            partitions: "BULKHEAD/PARTITION" entries; the bulkhead by name or id.

        Returns:
            The scheduler pools the agent now serves for its partitions.

        Raises:
            InvalidArgument: an entry is not "BULKHEAD/PARTITION".
            FailedPrecondition: an unknown bulkhead or partition, a partition already
                served by `max_agents` agents, or a second partition of one bulkhead.
                The agent is retried by its SDK, so it gets in once a slot frees up
                (or the bulkhead is created).
        """
        self.leave(agent_id)
        joined: list[tuple[BulkheadRecord, str]] = []
        try:
            for entry in dict.fromkeys(partitions):
                record, partition = self._resolve(entry)
                if not record.policy.join(partition, agent_id):
                    raise self._refusal(record, partition, agent_id)
                joined.append((record, partition))
        except Exception:
            for record, partition in joined:
                record.policy.leave(partition, agent_id)
            raise
        if joined:
            self._memberships[agent_id] = joined
        return [record.pool(partition) for record, partition in joined]

    def leave(self, agent_id: str) -> None:
        """The agent's link ended: its partition places are free again."""
        for record, partition in self._memberships.pop(agent_id, ()):
            record.policy.leave(partition, agent_id)

    def pools_of(self, agent_id: str) -> list[str] | None:
        """The partition pools an agent serves, or None when it joined no partition."""
        joined = self._memberships.get(agent_id)
        if not joined:
            return None
        return [record.pool(partition) for record, partition in joined if not record.deleted]

    def release(self, record: BulkheadRecord) -> list[str]:
        """Drops every membership in a deleted bulkhead; returns the agents affected."""
        affected: list[str] = []
        for agent_id, joined in list(self._memberships.items()):
            kept = [(r, p) for r, p in joined if r is not record]
            if len(kept) != len(joined):
                affected.append(agent_id)
                if kept:
                    self._memberships[agent_id] = kept
                else:
                    del self._memberships[agent_id]
        return affected

    def _resolve(self, entry: str) -> tuple[BulkheadRecord, str]:
        bulkhead, slash, partition = entry.partition("/")
        if not slash or not bulkhead or not partition:
            raise InvalidArgument(
                [FieldViolation("hello.partitions", f"{entry!r} is not BULKHEAD/PARTITION")]
            )
        record = self.by_name.get(bulkhead) or self.bulkheads.get(bulkhead)
        if record is None:
            raise FailedPrecondition(
                f"no bulkhead named {bulkhead!r}: create it before agents join it",
                subject=f"bulkheads/{bulkhead}",
                reason="NO_BULKHEAD",
            )
        if partition not in record.policy.names:
            raise FailedPrecondition(
                f"bulkhead {record.name!r} has no partition named {partition!r}",
                subject=partition_subject(record.name, partition),
                reason="NO_PARTITION",
            )
        return record, partition

    @staticmethod
    def _refusal(record: BulkheadRecord, partition: str, agent_id: str) -> FailedPrecondition:
        home = record.policy.partition_of(agent_id)
        subject = partition_subject(record.name, partition)
        if home is not None and home != partition:
            return FailedPrecondition(
                f"an agent serves one partition of bulkhead {record.name!r}; "
                f"this one already serves {home!r}, not {partition!r}",
                subject=subject,
                reason="ONE_PARTITION_PER_BULKHEAD",
            )
        limit = record.policy.view(partition).max_agents
        return FailedPrecondition(
            f"bulkhead partition {record.name}/{partition} is full: {limit} of {limit} "
            "agents already serve it; this agent joins once one of them leaves",
            subject=subject,
            reason="PARTITION_AGENTS_FULL",
        )

    # -- queries -----------------------------------------------------------------------

    def to_proto(self, record: BulkheadRecord) -> bulkhead_pb2.Bulkhead:
        """The bulkhead as the API shows it: definition plus each partition's counters."""
        bulkhead = bulkhead_pb2.Bulkhead()
        bulkhead.CopyFrom(record.bulkhead)
        for partition in bulkhead.partitions:
            view = record.policy.view(partition.name)
            partition.agents = view.agents
            partition.agent_ids.extend(view.agent_ids)
            partition.queued = view.queued
            partition.running = view.running
            partition.rejected = view.rejected
            partition.failed = view.failed
            partition.completed = view.completed
        return bulkhead

    def metric_rows(self) -> Iterator[tuple[str, str, int, int, int]]:
        """(bulkhead, partition, queued, running, rejected) per partition, for metrics."""
        for record in self.bulkheads.values():
            for view in record.policy.views():
                yield record.name, view.name, view.queued, view.running, view.rejected
