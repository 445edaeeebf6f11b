"""Bulkhead policy: partitions whose task slots and agents are their own.

Each partition admits at most `max_tasks` tasks at once, queued and running together,
and is served by at most `max_agents` agents, each of which serves no other partition
of the same bulkhead. Every count lives in its partition's own record and no decision
reads another partition's record, so a flooded or failing partition can fill only its
own slots: it cannot take admissions, agents or queue memory from its neighbours.

A task's life in a partition, as the service reports it:

    admit ──▶ queued ──task_started──▶ running ──task_finished──▶ (completed | failed)
                │                         │
                └──task_dropped           └──task_returned (lease lost: back to queued)
                   (cancelled)            └──task_dropped(running=True) (cancelled)

Refusals are counted (`rejected`) and name the partition, so the service can answer
RESOURCE_EXHAUSTED saying which partition is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from godel_grpc.patterns.convoy import IllegalTransition, InvalidDefinition, Violation

__all__ = [
    "MAX_PARTITIONS",
    "Admitted",
    "Bulkhead",
    "IllegalTransition",
    "InvalidDefinition",
    "PartitionSpec",
    "PartitionView",
    "Refused",
    "UnknownPartition",
    "Violation",
    "validate_partitions",
]

MAX_PARTITIONS = 64
"""Most partitions in one bulkhead; more is a sign of a missing level of grouping."""


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """One partition as defined at create.

    Attributes:
        name: unique within the bulkhead, e.g. ``auth``.
        max_agents: most agents serving it at once.
        max_tasks: most tasks queued plus running in it at once.
    """

    name: str
    max_agents: int
    max_tasks: int


def validate_partitions(
    partitions: Sequence[PartitionSpec], *, path: str = "partitions"
) -> list[Violation]:
    """Every problem of a create request's partitions, in request order.

    Field patterns and upper bounds belong to the request rules table; this checks
    what the policy relies on (positive limits, unique names, a bounded count).

    Returns:
        Violations with JSON paths like ``partitions[2].maxTasks``; empty means valid.
    """
    if not partitions:
        return [Violation(path, "a bulkhead needs at least one partition")]
    if len(partitions) > MAX_PARTITIONS:
        # The count alone decides; examining thousands of entries would be wasted work.
        return [
            Violation(
                f"{path}[{MAX_PARTITIONS}]",
                f"a bulkhead has at most {MAX_PARTITIONS} partitions; "
                f"this one has {len(partitions):,}",
            )
        ]
    found: list[Violation] = []
    first_index: dict[str, int] = {}
    for i, spec in enumerate(partitions):
        here = f"{path}[{i}]"
        if not spec.name.strip():
            found.append(Violation(f"{here}.name", "must not be empty"))
        elif spec.name in first_index:
            found.append(
                Violation(
                    f"{here}.name",
                    f"duplicate partition name {spec.name!r} "
                    f"(also {path}[{first_index[spec.name]}])",
                )
            )
        else:
            first_index[spec.name] = i
        if spec.max_agents < 1:
            found.append(Violation(f"{here}.maxAgents", "must be at least 1"))
        if spec.max_tasks < 1:
            found.append(Violation(f"{here}.maxTasks", "must be at least 1"))
    return found


@dataclass(frozen=True, slots=True)
class Admitted:
    """A task was given a slot; it is now counted as queued in `partition`."""

    partition: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A task was refused because its partition is full.

    Attributes:
        reason: a sentence for the RESOURCE_EXHAUSTED message, naming the partition.
        partition: the full partition.
        limit: its max_tasks.
    """

    reason: str
    partition: str
    limit: int


class UnknownPartition(LookupError):
    """A partition name the bulkhead does not define; the service answers NOT_FOUND."""

    def __init__(self, partition: str) -> None:
        super().__init__(f"no partition named {partition!r}")
        self.partition = partition


@dataclass(frozen=True, slots=True)
class PartitionView:
    """One partition's limits and counters, as GetBulkhead shows them.

    Attributes:
        name, max_agents, max_tasks: as defined.
        agent_ids: agents serving it now, in joining order.
        queued: admitted tasks waiting for one of its agents.
        running: its tasks leased to agents and not finished.
        completed, failed: finished tasks since creation.
        rejected: admissions refused since creation.
        dropped: tasks cancelled before finishing since creation.
    """

    name: str
    max_agents: int
    max_tasks: int
    agent_ids: tuple[str, ...]
    queued: int
    running: int
    completed: int
    failed: int
    rejected: int
    dropped: int

    @property
    def agents(self) -> int:
        """How many agents serve the partition now."""
        return len(self.agent_ids)

    @property
    def in_use(self) -> int:
        """Task slots taken: queued plus running."""
        return self.queued + self.running


class _Partition:
    """The mutable record of one partition; nothing outside its own methods touches it."""

    __slots__ = (
        "agents",
        "completed",
        "dropped",
        "failed",
        "queued",
        "rejected",
        "running",
        "spec",
    )

    def __init__(self, spec: PartitionSpec) -> None:
        self.spec = spec
        # A dict as an ordered set: joining order for display, O(1) membership.
        self.agents: dict[str, None] = {}
        self.queued = 0
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self.dropped = 0

    def view(self) -> PartitionView:
        return PartitionView(
            name=self.spec.name,
            max_agents=self.spec.max_agents,
            max_tasks=self.spec.max_tasks,
            agent_ids=tuple(self.agents),
            queued=self.queued,
            running=self.running,
            completed=self.completed,
            failed=self.failed,
            rejected=self.rejected,
            dropped=self.dropped,
        )


class Bulkhead:
    """The partitions of one bulkhead and their slot and agent accounting.

    Args:
        partitions: the definition, in request order.

    Raises:
        InvalidDefinition: what `validate_partitions` reports, if anything.
    """

    __slots__ = ("_agent_home", "_partitions")

    def __init__(self, partitions: Sequence[PartitionSpec]) -> None:
        violations = validate_partitions(partitions)
        if violations:
            raise InvalidDefinition(violations)
        self._partitions = {spec.name: _Partition(spec) for spec in partitions}
        self._agent_home: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Partition names in definition order."""
        return tuple(self._partitions)

    def view(self, partition: str) -> PartitionView:
        """One partition's limits and counters.

        Raises:
            UnknownPartition: no such partition.
        """
        return self._get(partition).view()

    def views(self) -> tuple[PartitionView, ...]:
        """Every partition's view, in definition order."""
        return tuple(p.view() for p in self._partitions.values())

    def partition_of(self, agent_id: str) -> str | None:
        """The partition an agent serves, if any (why a `join` elsewhere said False)."""
        return self._agent_home.get(agent_id)

    def has_room(self, partition: str) -> bool:
        """Whether `admit` would admit now, without counting anything."""
        record = self._get(partition)
        return record.queued + record.running < record.spec.max_tasks

    # -- tasks ---------------------------------------------------------------------------

    def admit(self, partition: str) -> Admitted | Refused:
        """Take a task slot in `partition`, or refuse when queued + running is at max.

        Raises:
            UnknownPartition: no such partition (nothing counted).
        """
        record = self._get(partition)
        limit = record.spec.max_tasks
        if record.queued + record.running >= limit:
            record.rejected += 1
            return Refused(
                f"bulkhead partition {partition!r} is full: {limit} of {limit} tasks "
                f"queued or running ({record.running} running)",
                partition,
                limit,
            )
        record.queued += 1
        return Admitted(partition)

    def task_started(self, partition: str) -> None:
        """A queued task of the partition was leased to one of its agents.

        Raises:
            IllegalTransition: nothing is queued there (a bookkeeping bug upstream).
        """
        record = self._get(partition)
        self._require(record.queued > 0, partition, "start a task", "queued")
        record.queued -= 1
        record.running += 1

    def task_finished(self, partition: str, failed: bool) -> None:
        """A running task of the partition ended; its slot is free again.

        Raises:
            IllegalTransition: nothing is running there.
        """
        record = self._get(partition)
        self._require(record.running > 0, partition, "finish a task", "running")
        record.running -= 1
        if failed:
            record.failed += 1
        else:
            record.completed += 1

    def task_returned(self, partition: str) -> None:
        """A running task lost its lease (agent gone) and waits in the queue again.

        Its slot stays taken, so the partition's limit still holds.

        Raises:
            IllegalTransition: nothing is running there.
        """
        record = self._get(partition)
        self._require(record.running > 0, partition, "return a task", "running")
        record.running -= 1
        record.queued += 1

    def task_dropped(self, partition: str, *, running: bool = False) -> None:
        """A task of the partition was cancelled before finishing; its slot is freed.

        Args:
            partition: the task's partition.
            running: whether it was running (leased) rather than queued.

        Raises:
            IllegalTransition: no task in that state there.
        """
        record = self._get(partition)
        if running:
            self._require(record.running > 0, partition, "drop a running task", "running")
            record.running -= 1
        else:
            self._require(record.queued > 0, partition, "drop a queued task", "queued")
            record.queued -= 1
        record.dropped += 1

    # -- agents --------------------------------------------------------------------------

    def join(self, partition: str, agent_id: str) -> bool:
        """Let an agent serve the partition.

        Returns:
            True when it serves the partition (again: joining twice is harmless); False
            when `max_agents` agents already serve it, or the agent serves another
            partition of this bulkhead (see `partition_of`).

        Raises:
            UnknownPartition: no such partition.
        """
        record = self._get(partition)
        home = self._agent_home.get(agent_id)
        if home is not None:
            return home == partition
        if len(record.agents) >= record.spec.max_agents:
            return False
        record.agents[agent_id] = None
        self._agent_home[agent_id] = partition
        return True

    def leave(self, partition: str, agent_id: str) -> bool:
        """The agent stops serving the partition (disconnected, terminated, moved).

        Returns:
            Whether it was serving it.

        Raises:
            UnknownPartition: no such partition.
        """
        record = self._get(partition)
        if agent_id not in record.agents:
            return False
        del record.agents[agent_id]
        del self._agent_home[agent_id]
        return True

    # -- internals -----------------------------------------------------------------------

    def _get(self, partition: str) -> _Partition:
        try:
            return self._partitions[partition]
        except KeyError:
            raise UnknownPartition(partition) from None

    @staticmethod
    def _require(condition: bool, partition: str, action: str, state: str) -> None:
        if not condition:
            raise IllegalTransition(
                f"cannot {action} in partition {partition!r}: no task is {state} there",
                subject=f"partition {partition}",
            )
