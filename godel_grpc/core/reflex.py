"""Reflex agents in the core: per-agent config, score, lessons and memory, folded from
events like every other state.

Three events carry it (event.proto 80-82): `agent.reflex_configured` when a hello
declares a reflex config other than the recorded one, `agent.feedback_submitted` for
every SubmitFeedback (the score after it is in the event, computed by the pure policy in
`patterns/reflex.py`), and `agent.memory_written` for each write to persistent memory.
Session memory is liveness, not history: it is kept here, never journalled, and cleared
whenever the agent's link opens or closes.

The manager plugs into the coordinator like the pattern managers (`pattern_host.py`):
it observes every event, takes no actions, and hands a snapshot the events that rebuild
what it keeps (config, the latest feedback events, one write per memory key).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import json_format, struct_pb2

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_pb2, event_pb2
from godel_grpc.core import events
from godel_grpc.core.pattern_host import PatternAction
from godel_grpc.core.records import AgentRecord
from godel_grpc.patterns import reflex as policy

log = logging.getLogger(__name__)

PERSISTENT = "persistent"


@dataclass(slots=True)
class _Reflex:
    """What the coordinator knows of one agent's reflex side."""

    config: agent_pb2.ReflexConfig | None = None
    score: policy.Score = field(default_factory=policy.Score)
    feedback_count: int = 0
    lessons: tuple[str, ...] = ()
    memory: dict[str, struct_pb2.Value] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    recent: list[event_pb2.Event] = field(default_factory=list)
    """The feedback events that rebuild score, count and lessons (`_still_needed`)."""

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.config.enabled

    @property
    def feedback_loop(self) -> bool:
        return self.enabled and self.config is not None and self.config.feedback_loop

    @property
    def persistent(self) -> bool:
        return self.enabled and self.config is not None and self.config.memory == PERSISTENT


class ReflexManager:
    """Reflex state of every agent, and the decisions that read it."""

    def __init__(self, agents: Mapping[str, AgentRecord]) -> None:
        self._agents = agents
        self._by_agent: dict[str, _Reflex] = {}

    def _of(self, agent_id: str) -> _Reflex:
        found = self._by_agent.get(agent_id)
        if found is None:
            found = self._by_agent[agent_id] = _Reflex()
        return found

    # -- folding (PatternManager) ------------------------------------------------------

    def observe(self, event: event_pb2.Event) -> None:
        """Folds reflex events, and clears session memory when a link opens or closes."""
        kind = event.WhichOneof("payload")
        if kind == "agent_reflex_configured":
            configured = event.agent_reflex_configured
            self._of(configured.agent_id).config = configured.reflex
        elif kind == "agent_feedback_submitted":
            self._fold_feedback(event)
        elif kind == "agent_memory_written":
            written = event.agent_memory_written
            value = written.value if not written.deleted else None
            self._put(self._of(written.agent_id), written.key, value)
        elif kind in ("agent_connected", "agent_disconnected"):
            agent_id = getattr(event, kind).agent_id
            state = self._by_agent.get(agent_id)
            if state is not None and not state.persistent:
                state.memory.clear()
                state.sizes.clear()
        else:
            return
        self._show(event.agent_id or _agent_of(event))

    def _fold_feedback(self, event: event_pb2.Event) -> None:
        given = event.agent_feedback_submitted
        state = self._of(given.agent_id)
        state.feedback_count = given.feedback_count
        if given.scored:
            state.score = policy.Score(given.score, given.scored_count)
            state.lessons = policy.add_lesson(state.lessons, given.comments)
        state.recent = _still_needed([*state.recent, event])

    def take_actions(self) -> list[PatternAction]:
        """Reflex decides nothing on its own."""
        return []

    def reconcile(self, live_tasks: Sequence[str]) -> None:
        """Nothing is ever left half-done."""

    def history(self) -> list[event_pb2.Event]:
        """Per agent: its config, its latest feedback events and one write per key of
        its persistent memory; folding them again rebuilds the same state (the feedback
        events carry the score and counts after them)."""
        kept: list[event_pb2.Event] = []
        for agent_id, state in self._by_agent.items():
            if state.config is not None:
                event = events.agent_reflex_configured(agent_id, state.config)
                kept.append(event)
            kept.extend(state.recent)
            if state.persistent:
                for key, value in state.memory.items():
                    kept.append(events.agent_memory_written(agent_id, key, value))
        return kept

    # -- queries -----------------------------------------------------------------------

    def config(self, agent_id: str) -> agent_pb2.ReflexConfig | None:
        """The reflex config recorded for an agent."""
        state = self._by_agent.get(agent_id)
        return state.config if state is not None else None

    def preference(self, agent_id: str) -> float | None:
        """The score the scheduler weighs an agent by: None unless its feedback loop is
        on and it has been rated (such agents are scheduled as before)."""
        state = self._by_agent.get(agent_id)
        if state is None or not state.feedback_loop:
            return None
        return state.score.value

    def identity_for(self, hello: link_pb2.AgentHello, connected: Container[str]) -> str | None:
        """A registered agent that a new process may resume by name: one with
        persistent memory whose name the hello gives, whose hello asks for persistent
        memory too, and that is not `connected` now (a second process with a taken name
        is refused as before). That is what lets memory outlive the agent's process."""
        asked = hello.reflex
        if not (hello.name and asked.enabled and asked.memory == PERSISTENT):
            return None
        for agent in self._agents.values():
            if agent.name == hello.name:
                state = self._by_agent.get(agent.id)
                if state is not None and state.persistent and agent.id not in connected:
                    return agent.id
        return None

    def memory_struct(self, agent_id: str) -> struct_pb2.Struct:
        """The agent's memory as the welcome carries it."""
        memory = struct_pb2.Struct()
        state = self._by_agent.get(agent_id)
        if state is not None:
            for key, value in state.memory.items():
                memory.fields[key].CopyFrom(value)
        return memory

    def decorate(self, agent_id: str, assignment: link_pb2.TaskAssignment) -> None:
        """Puts the agent's score and recent lessons on an assignment (feedback loop on)."""
        state = self._by_agent.get(agent_id)
        if state is None or not state.feedback_loop:
            return
        assignment.score = state.score.value or 0.0
        assignment.feedback_count = state.feedback_count
        assignment.lessons.extend(state.lessons)

    # -- commands ----------------------------------------------------------------------

    def configure(self, agent_id: str, hello: link_pb2.AgentHello) -> list[event_pb2.Event]:
        """The event recording the hello's reflex config, if it differs from the one
        recorded. An unset config keeps the recorded one, so that a process started without
        its reflex flags cannot wipe persistent memory by accident."""
        if not hello.HasField("reflex") or hello.reflex == self.config(agent_id):
            return []
        return [events.agent_reflex_configured(agent_id, hello.reflex)]

    def feedback(
        self, agent_id: str, task_id: str, rating: float, comments: str
    ) -> event_pb2.Event:
        """The event of one feedback record, with the score after it."""
        state = self._of(agent_id)
        event = events.agent_feedback_submitted(agent_id, task_id, rating, comments)
        given = event.agent_feedback_submitted
        given.feedback_count = state.feedback_count + 1
        if state.feedback_loop:
            assert state.config is not None
            rate = policy.effective_rate(state.config.adaptation_rate)
            score = state.score.fold(rating, rate)
            given.scored = True
            given.adaptation_rate = rate
            given.score = score.value or 0.0
            given.scored_count = score.count
        else:
            given.score = state.score.value or 0.0
            given.scored_count = state.score.count
        return event

    def write_memory(
        self, agent_id: str, writes: Sequence[link_pb2.MemoryWrite]
    ) -> list[event_pb2.Event]:
        """Applies an agent's memory writes: persistent ones come back as events for the
        caller to record (they are applied when folded), session ones are applied here.
        Writes that break a limit are dropped and logged."""
        if not writes:
            return []
        state = self._of(agent_id)
        batch: list[event_pb2.Event] = []
        sizes = dict(state.sizes)
        for write in writes:
            value = None if write.delete else write.value
            try:
                size = None if value is None else _size(value)
                policy.check_memory_write(sizes, write.key, size)
            except policy.MemoryLimitError as exc:
                log.warning(
                    "memory write refused", extra={"agent_id": agent_id, "reason": str(exc)}
                )
                continue
            if size is None:
                sizes.pop(write.key, None)
            else:
                sizes[write.key] = size
            if state.persistent:
                batch.append(events.agent_memory_written(agent_id, write.key, value))
            else:
                self._put(state, write.key, value)
        if not state.persistent:
            self._show(agent_id)
        return batch

    # -- helpers -----------------------------------------------------------------------

    def _put(self, state: _Reflex, key: str, value: struct_pb2.Value | None) -> None:
        if value is None:
            state.memory.pop(key, None)
            state.sizes.pop(key, None)
            return
        copied = struct_pb2.Value()
        copied.CopyFrom(value)
        state.memory[key] = copied
        state.sizes[key] = _size(value)

    def status(self, agent_id: str) -> agent_pb2.AgentReflexStatus | None:
        """The agent's reflex state as GetAgent shows it."""
        state = self._by_agent.get(agent_id)
        if state is None:
            return None
        status = agent_pb2.AgentReflexStatus(
            score=state.score.value or 0.0,
            scored=state.score.value is not None,
            feedback_count=state.feedback_count,
            lessons=state.lessons,
            memory_keys=len(state.memory),
            memory_bytes=sum(len(k) + v for k, v in state.sizes.items()),
        )
        if state.config is not None:
            status.config.CopyFrom(state.config)
        return status

    def _show(self, agent_id: str) -> None:
        """Refreshes what the agent's record shows (GetAgent, ListAgents)."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.reflex = self.status(agent_id)


def _still_needed(recent: list[event_pb2.Event]) -> list[event_pb2.Event]:
    """The feedback events a snapshot needs, in order: the last one (the count), the
    last scored one (the score) and the ones that gave the current lessons; at most
    `MAX_LESSONS` + 2 events whatever the agent's history."""
    keep = {len(recent) - 1}
    lessons = 0
    for index in range(len(recent) - 1, -1, -1):
        given = recent[index].agent_feedback_submitted
        if given.scored and not any(
            recent[i].agent_feedback_submitted.scored for i in keep if i > index
        ):
            keep.add(index)
        if given.scored and given.comments.strip() and lessons < policy.MAX_LESSONS:
            keep.add(index)
            lessons += 1
    return [recent[i] for i in sorted(keep)]


def _size(value: struct_pb2.Value) -> int:
    return policy.encoded_size(json_format.MessageToDict(value))


def _agent_of(event: event_pb2.Event) -> str:
    payload = getattr(event, event.WhichOneof("payload") or "", None)
    return str(getattr(payload, "agent_id", ""))
