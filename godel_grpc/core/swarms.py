"""Swarms over the core: elastic pools of spawned agents, folded from events.

A swarm's tasks are ordinary tasks targeting the pool ``swarm:ID``. Its agents are
processes the coordinator spawned for it; their ids are chosen before the process
starts and recorded (``swarm.agent_started``), so when an agent's hello arrives the
coordinator knows it belongs to the swarm and gives it the swarm's pool and nothing
else. A draining member serves no pool: it finishes what it holds, then is stopped.

This manager only folds: swarm definitions, scale decisions (which feed each swarm's
`Autoscaler`, so cooldown and caps survive a restart), members, and the queued and
running counts of each swarm's tasks. Deciding and acting (spawning, draining,
stopping) is `swarm_commands`' loop, which records what it does as events that come
back through here.

After a coordinator restart the members the log lists are gone (their processes were
children of the old coordinator); the loop finds no runtime handle for them, records
them stopped, and the swarm is brought back to `min_agents` by a bounds correction.
Task counters (completed, failed) count from the coordinator's start, as the queue and
bulkhead counters do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from godel_grpc._proto.godel.v1 import event_pb2, swarm_pb2, task_pb2
from godel_grpc.core.pattern_host import PatternAction, in_seen_order
from godel_grpc.core.records import TaskRecord, timestamp
from godel_grpc.patterns.autoscale import Autoscaler, Observation, ScalePolicy

POOL_PREFIX = "swarm:"
MEMBER_LABEL = "godel.swarm"
"""Label on every swarm agent: the name of its swarm."""
RECENT_DECISIONS = 20
"""Scale decisions GetSwarm shows (and a snapshot keeps) per swarm."""


def policy_of(swarm: swarm_pb2.Swarm) -> ScalePolicy:
    """The autoscaler's policy for a swarm's definition (zero values as defaults)."""
    given = swarm.scale_policy
    return ScalePolicy.from_request(
        min_agents=swarm.min_agents,
        max_agents=swarm.max_agents,
        target=given.target,
        scale_up_threshold=given.scale_up_threshold,
        scale_down_threshold=given.scale_down_threshold,
        cooldown=given.cooldown,
        scale_up_window=given.scale_up_stabilization_window,
        scale_down_window=given.scale_down_stabilization_window,
        max_scale_up=given.max_scale_up_agents,
        max_scale_down=given.max_scale_down_agents,
        scale_period=given.scale_period,
    )


@dataclass
class Member:
    """One agent started for a swarm."""

    agent_id: str
    name: str
    swarm_id: str
    started: tuple[int, event_pb2.Event]
    draining: tuple[int, event_pb2.Event] | None = None


@dataclass
class SwarmRecord:
    """One swarm: definition, autoscaler, members, task counts and recent decisions."""

    swarm: swarm_pb2.Swarm
    created: tuple[int, event_pb2.Event]
    autoscaler: Autoscaler
    desired: int
    members: dict[str, Member] = field(default_factory=dict)
    decisions: list[tuple[int, event_pb2.Event]] = field(default_factory=list)
    """Recent `swarm.scaled` events, oldest first."""
    queued: int = 0
    in_flight: int = 0
    completed: int = 0
    failed: int = 0
    last_scale_time: float = 0.0
    deleted: bool = False

    @property
    def id(self) -> str:
        return self.swarm.id

    @property
    def pool(self) -> str:
        """The scheduler pool of the swarm's tasks."""
        return f"{POOL_PREFIX}{self.swarm.id}"

    def active(self) -> list[Member]:
        """Members that take work (started or starting, not draining)."""
        return [m for m in self.members.values() if m.draining is None]

    def observation(self) -> Observation:
        """What the autoscaler measures now."""
        return Observation(self.queued, self.in_flight, len(self.active()))


class SwarmManager:
    """Every swarm the coordinator knows, folded from events."""

    def __init__(self, tasks: dict[str, TaskRecord]) -> None:
        self._tasks = tasks
        self.swarms: dict[str, SwarmRecord] = {}
        self.by_name: dict[str, SwarmRecord] = {}
        self.members: dict[str, Member] = {}
        """Every member by agent id, also of deleted swarms until they are stopped."""
        self._open: dict[str, tuple[SwarmRecord, bool]] = {}
        """Open swarm tasks: task id → (swarm, running)."""
        self._seen = itertools.count()

    # -- folding ---------------------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        if not self.swarms and not self.members and not event.HasField("swarm_created"):
            return  # the task hot path pays nothing while there is no swarm
        kind = event.WhichOneof("payload")
        if kind is None:
            return
        if kind.startswith("swarm_"):
            self._observe_swarm(kind, event)
        elif kind == "task_submitted":
            spec = event.task_submitted.task
            if spec.WhichOneof("target") == "swarm":
                record = self.swarms.get(spec.swarm)
                if record is not None:
                    self._open[spec.id] = (record, False)
                    record.queued += 1
        elif kind == "task_leased":
            self._running(event.task_leased.task_id, True)
        elif kind == "task_requeued":
            self._running(event.task_requeued.task_id, False)
        elif kind == "task_attempt_failed":
            failed = event.task_attempt_failed
            if failed.final:
                self._ended(failed.task_id, failed=True)
            else:
                self._running(failed.task_id, False)
        elif kind == "task_succeeded":
            self._ended(event.task_succeeded.task_id, failed=False)
        elif kind == "task_cancelled":
            self._ended(event.task_cancelled.task_id, failed=None)

    def _observe_swarm(self, kind: str, event: event_pb2.Event) -> None:
        seen = (next(self._seen), event)
        if kind == "swarm_created":
            swarm = event.swarm_created.swarm
            policy = policy_of(swarm)
            record = SwarmRecord(swarm, seen, Autoscaler(policy), policy.min_agents)
            self.swarms[swarm.id] = record
            self.by_name[swarm.name] = record
        elif kind == "swarm_deleted":
            gone = self.swarms.pop(event.swarm_deleted.swarm_id, None)
            if gone is not None:
                self.by_name.pop(gone.swarm.name, None)
                gone.deleted = True
                for task_id in [t for t, (r, _) in self._open.items() if r is gone]:
                    del self._open[task_id]
        elif kind == "swarm_scaled":
            scaled = event.swarm_scaled
            scaled_record = self.swarms.get(scaled.swarm_id)
            if scaled_record is None:
                return
            record = scaled_record
            decision = scaled.decision
            at = decision.time.ToNanoseconds() / 1e9
            record.autoscaler.note(at, decision.from_agents, decision.to_agents, decision.trigger)
            record.desired = decision.to_agents
            record.last_scale_time = at
            record.decisions.append(seen)
            del record.decisions[:-RECENT_DECISIONS]
        elif kind == "swarm_agent_started":
            started = event.swarm_agent_started
            owner_record = self.swarms.get(started.swarm_id)
            if owner_record is None:
                return
            record = owner_record
            member = Member(started.agent_id, started.name, started.swarm_id, seen)
            record.members[member.agent_id] = member
            self.members[member.agent_id] = member
        elif kind == "swarm_agent_draining":
            found = self.members.get(event.swarm_agent_draining.agent_id)
            if found is not None and found.draining is None:
                found.draining = seen
        elif kind == "swarm_agent_stopped":
            gone_member = self.members.pop(event.swarm_agent_stopped.agent_id, None)
            if gone_member is not None:
                owner = self.swarms.get(gone_member.swarm_id)
                if owner is not None:
                    owner.members.pop(gone_member.agent_id, None)

    def _running(self, task_id: str, running: bool) -> None:
        found = self._open.get(task_id)
        if found is None or found[1] == running:
            return
        record, _ = found
        self._open[task_id] = (record, running)
        delta = 1 if running else -1
        record.in_flight += delta
        record.queued -= delta

    def _ended(self, task_id: str, *, failed: bool | None) -> None:
        found = self._open.pop(task_id, None)
        if found is None:
            return
        record, running = found
        if running:
            record.in_flight -= 1
        else:
            record.queued -= 1
        if failed is True:
            record.failed += 1
        elif failed is False:
            record.completed += 1

    # -- the coordinator's side --------------------------------------------------------

    def take_actions(self) -> list[PatternAction]:
        """Swarms decide on a timer (`swarm_commands`), never in reaction to one event."""
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """After recovery: recounts each swarm's queued and running tasks from the live
        ones (a snapshot holds no counts)."""
        self._open.clear()
        for record in self.swarms.values():
            record.queued = record.in_flight = 0
        for task_id in live_tasks:
            task = self._tasks.get(task_id)
            if task is None or task.terminal or not task.pool.startswith(POOL_PREFIX):
                continue
            found = self.swarms.get(task.pool.removeprefix(POOL_PREFIX))
            if found is None:
                continue
            record = found
            running = task.state == task_pb2.Task.STATE_RUNNING
            self._open[task_id] = (record, running)
            if running:
                record.in_flight += 1
            else:
                record.queued += 1

    def history(self) -> list[event_pb2.Event]:
        """Creation, recent decisions and the live members' events of each swarm, plus
        the members of deleted swarms still to be stopped, in the order seen."""
        histories: list[list[tuple[int, event_pb2.Event]]] = []
        for record in self.swarms.values():
            histories.append([record.created, *record.decisions])
        for member in self.members.values():
            if member.swarm_id in self.swarms:
                histories.append([member.started, *([member.draining] if member.draining else [])])
        return in_seen_order(histories)

    # -- queries -----------------------------------------------------------------------

    def pools_of(self, agent_id: str) -> list[str] | None:
        """The pools a swarm agent serves (its swarm's, none while draining), or None
        for an agent of no swarm."""
        member = self.members.get(agent_id)
        if member is None:
            return None
        record = self.swarms.get(member.swarm_id)
        if record is None or member.draining is not None:
            return []
        return [record.pool]

    def queued_task_ids(self, record: SwarmRecord) -> list[str]:
        """Ids of the swarm's tasks waiting for an agent."""
        return [t for t, (r, running) in self._open.items() if r is record and not running]

    def to_proto(self, record: SwarmRecord) -> swarm_pb2.Swarm:
        """The swarm as the API shows it: definition plus size, load and decisions."""
        swarm = swarm_pb2.Swarm()
        swarm.CopyFrom(record.swarm)
        active = record.active()
        swarm.current_agents = len(active)
        swarm.draining_agents = len(record.members) - len(active)
        swarm.desired_agents = record.desired
        swarm.queue_depth = record.queued
        swarm.in_flight = record.in_flight
        swarm.tasks_completed = record.completed
        swarm.tasks_failed = record.failed
        swarm.agent_ids.extend(m.agent_id for m in active)
        for _, event in reversed(record.decisions):
            swarm.scale_events.append(event.swarm_scaled.decision)
        if record.last_scale_time:
            swarm.last_scale_time.CopyFrom(timestamp(record.last_scale_time))
        return swarm

    def metric_rows(self) -> Iterator[tuple[str, int, int, int]]:
        """(swarm name, current, desired, draining) per swarm, for metrics."""
        for record in self.swarms.values():
            active = len(record.active())
            yield record.swarm.name, active, record.desired, len(record.members) - active
