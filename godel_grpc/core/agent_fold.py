"""An agent's state as the fold of its own events: the one function both the live
coordinator and ReplayAgent use, so the replayed state cannot drift from the live one.

An agent's events are those indexed under its id (`Event.agent_id`): its
"agent/<id>" stream (registered, connected, disconnected, circuit changes) and the
events of tasks it ran (leased, succeeded, attempt failed, requeued, cancelled while
running). Everything here is pure: no I/O, no clock; time comes from the events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from godel_grpc._proto.godel.v1 import event_pb2
from godel_grpc.core.records import Agent, AgentRecord

CLOSED = "CLOSED"


def register(event: event_pb2.Event) -> AgentRecord:
    """A new agent record from its "agent.registered" event (not yet counted: `apply`
    counts every event of the agent, this one included)."""
    registered = event.agent_registered
    agent = AgentRecord(
        registered.agent_id,
        registered.name,
        registered.role,
        event.time.ToNanoseconds() / 1e9,
    )
    agent.actions = list(registered.actions)
    agent.queues = list(registered.queues)
    agent.capacity = registered.capacity
    agent.labels = dict(registered.labels)
    agent.version = registered.version
    agent.resume_token_sha256 = registered.resume_token_sha256
    return agent


def apply(agent: AgentRecord, event: event_pb2.Event) -> None:
    """Folds one of the agent's own events into its record.

    Counters follow the attempts the agent held: a task event changes them only when
    the task was leased to this agent and its attempt had not ended, so an event about
    a task the agent no longer runs (a queued task past its deadline) changes nothing.
    """
    kind = event.WhichOneof("payload")
    running = agent.running
    if kind == "task_leased":
        running.add(event.task_leased.task_id)
    elif kind == "task_succeeded":
        if event.task_succeeded.task_id in running:
            running.discard(event.task_succeeded.task_id)
            agent.tasks_completed += 1
    elif kind == "task_attempt_failed":
        if event.task_attempt_failed.task_id in running:
            running.discard(event.task_attempt_failed.task_id)
            agent.tasks_completed += 1
            agent.tasks_failed += 1
    elif kind == "task_requeued":
        running.discard(event.task_requeued.task_id)
    elif kind == "task_cancelled":
        running.discard(event.task_cancelled.task_id)
    elif kind == "agent_connected":
        agent.state = Agent.STATE_READY
        agent.capacity = event.agent_connected.capacity
        agent.connect_time = event.time.ToNanoseconds() / 1e9
        agent.last_seen = agent.connect_time
    elif kind == "agent_disconnected":
        agent.state = Agent.STATE_DISCONNECTED
    elif kind == "agent_circuit_changed":
        agent.circuit = event.agent_circuit_changed.to_state
    agent.in_flight = len(running)
    agent.event_count += 1
    if event.id:
        agent.position = event.id


def fold(agent: AgentRecord | None, event: event_pb2.Event) -> AgentRecord | None:
    """`apply` for a reader starting before the agent existed: "agent.registered"
    creates the record; events before it (there are none in a sound log) are skipped."""
    if event.WhichOneof("payload") == "agent_registered":
        agent = register(event)
    if agent is not None:
        apply(agent, event)
    return agent


def to_snapshot(agent: AgentRecord, reflex: ReflexState | None = None) -> event_pb2.AgentSnapshot:
    """Everything `from_snapshot` (and `ReflexState.from_snapshot`) needs to go on
    folding where `apply` left off."""
    snapshot = event_pb2.AgentSnapshot(
        agent=agent.to_proto(),
        running_task_ids=sorted(agent.running),
        queues=agent.queues,
        resume_token_sha256=agent.resume_token_sha256,
        circuit_state=agent.circuit,
        event_count=agent.event_count,
        position=agent.position,
    )
    if reflex is not None:
        snapshot.reflex_score = reflex.score
        snapshot.reflex_memory.CopyFrom(reflex.memory_struct())
    return snapshot


def from_snapshot(snapshot: event_pb2.AgentSnapshot) -> AgentRecord:
    """The record a snapshot holds."""
    proto = snapshot.agent
    agent = AgentRecord(proto.id, proto.name, proto.role, proto.create_time.ToNanoseconds() / 1e9)
    agent.actions = list(proto.actions)
    agent.queues = list(snapshot.queues)
    agent.capacity = proto.capacity
    agent.labels = dict(proto.labels)
    agent.version = proto.version
    agent.resume_token_sha256 = snapshot.resume_token_sha256
    agent.state = proto.state
    agent.running = set(snapshot.running_task_ids)
    agent.in_flight = len(agent.running)
    agent.tasks_completed = proto.tasks_completed
    agent.tasks_failed = proto.tasks_failed
    agent.connect_time = proto.connect_time.ToNanoseconds() / 1e9
    agent.last_seen = proto.last_seen_time.ToNanoseconds() / 1e9
    agent.circuit = snapshot.circuit_state or CLOSED
    agent.event_count = snapshot.event_count
    agent.position = snapshot.position
    return agent


@dataclass
class ReflexState:
    """What replay shows of an agent's reflex pattern: its score and its persistent
    memory. The live coordinator keeps these in the reflex manager; replay folds the
    same events here, so it needs no copy of them in every live agent record."""

    score: float = 0.0
    memory: dict[str, struct_pb2.Value] = field(default_factory=dict)

    def apply(self, event: event_pb2.Event) -> None:
        """Folds one of the agent's events (all but the reflex ones change nothing)."""
        kind = event.WhichOneof("payload")
        if kind == "agent_feedback_submitted":
            if event.agent_feedback_submitted.scored:
                self.score = event.agent_feedback_submitted.score
        elif kind == "agent_memory_written":
            written = event.agent_memory_written
            if written.deleted:
                self.memory.pop(written.key, None)
            else:
                value = struct_pb2.Value()
                value.CopyFrom(written.value)
                self.memory[written.key] = value

    def memory_struct(self) -> struct_pb2.Struct:
        memory = struct_pb2.Struct()
        for key, value in self.memory.items():
            memory.fields[key].CopyFrom(value)
        return memory

    @classmethod
    def from_snapshot(cls, snapshot: event_pb2.AgentSnapshot) -> ReflexState:
        state = cls(snapshot.reflex_score)
        for key, value in snapshot.reflex_memory.fields.items():
            state.memory[key] = value
        return state
