"""The coordinator's side of every open agent link.

An agent's hello registers it or resumes its identity (resume token, spawn promise or
reflex memory), its messages fold in results, released attempts, progress, logs and
memory writes, and the end of its link hands its leases back to the queue as lost
attempts. Its breaker's changes are recorded here too. Tasks, dispatch and leases stay
with the `Coordinator`, which this reaches through its task-side methods (`enqueue`,
`retry_later`, `notify`, `end_lease`, `schedule_dispatch`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc.core import events
from godel_grpc.core.breakers import breaker_settings
from godel_grpc.core.records import Agent, AgentRecord, Task, TaskRecord
from godel_grpc.core.session import AgentSession
from godel_grpc.errors import AlreadyExists
from godel_grpc.patterns.breaker import Transition

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

log = logging.getLogger(__name__)


class AgentLinks:
    """Opens, feeds and closes agents' sessions for one coordinator."""

    def __init__(self, core: Coordinator) -> None:
        self._core = core
        self.sessions: dict[str, AgentSession] = {}
        """The open link of each connected agent, by agent id."""
        self._named: dict[str, AgentSession] = {}
        """The same links by agent name: a hello's name is checked in one lookup, not by
        walking every link (which made connecting n agents cost n squared)."""
        self._agent_ids = itertools.count(1)
        self._drain_on_connect: set[str] = set()
        """Agents asked to drain before their first link (see `drain_agent`)."""
        self._counted = {
            outcome: core.metrics.results.labels(outcome)
            for outcome in ("stale", "failed", "succeeded")
        }
        """`godel_task_results_total` children, resolved once: one is counted per result."""

    async def open_session(self, hello: link_pb2.AgentHello) -> AgentSession:
        """Registers or resumes an agent and returns its session, welcome queued."""
        self._core.require_open()
        breaker = breaker_settings(
            hello.circuit_breaker if hello.HasField("circuit_breaker") else None,
            "hello.circuit_breaker",
        )
        token = hello.resume_token
        agent_id = self._core.state.agents_by_token.get(_sha256(token)) if token else None
        if agent_id is None and self._core.spawned_ids.get(hello.name) in self._core.state.agents:
            agent_id = self._core.spawned_ids[hello.name]  # a restarted spawned process resumes
        if agent_id is None:  # reflex memory outlives processes: a known name resumes
            agent_id = self._core.reflex.identity_for(hello, self.sessions)
        batch: list[event_pb2.Event] = []
        resumed = agent_id is not None
        if agent_id is None:
            token = secrets.token_urlsafe(24)
            agent_id = self._core.spawned_ids.get(hello.name) or (
                f"ag-{self._core.state.epoch}-{next(self._agent_ids)}"
            )
            name = hello.name or f"{hello.role}-{agent_id}"
            registered = event_pb2.AgentRegistered(
                agent_id=agent_id,
                name=name,
                role=hello.role,
                actions=hello.actions,
                queues=hello.queues,
                capacity=hello.capacity or 1,
                labels=hello.labels,
                resume_token_sha256=_sha256(token),
                version=hello.version,
            )
            batch.append(events.agent_registered(registered))
        else:
            name = self._core.state.agents[agent_id].name
        other = self._named.get(name)
        if other is not None and other.agent_id != agent_id:
            raise AlreadyExists(
                f"an agent named {name!r} is already connected", reason="AGENT_NAME_TAKEN"
            )
        previous = self.sessions.get(agent_id)
        if previous is not None:
            self.close_session(previous, "replaced by a new link of the same agent")
        # Before anything is recorded: an agent refused a partition place registers
        # nothing, and its SDK retries (FAILED_PRECONDITION) until a place frees up.
        self._core.bulkheads.join(agent_id, hello.partitions)
        capacity = hello.capacity or 1
        batch.extend(self._core.reflex.configure(agent_id, hello))
        batch.append(events.agent_connected(agent_id, resumed, capacity))
        done = self._core.record(batch)
        agent = self._core.state.agents[agent_id]
        if resumed:
            agent.actions = list(hello.actions)
            agent.queues = list(hello.queues)
            agent.labels = dict(hello.labels)
        session = AgentSession(agent_id, name, capacity)
        self.sessions[agent_id] = session
        self._named[name] = session
        welcome = link_pb2.AgentWelcome(
            agent_id=agent_id, name=name, resume_token=token, resumed=resumed
        )
        welcome.heartbeat_interval.FromNanoseconds(
            int(self._core.settings.heartbeat_interval * 1e9)
        )
        welcome.heartbeat_timeout.FromNanoseconds(int(self._core.settings.heartbeat_timeout * 1e9))
        welcome.memory.CopyFrom(self._core.reflex.memory_struct(agent_id))
        session.send_welcome(welcome)
        # Its breaker exists from the moment it shows as connected (GetCircuitState
        # answers), not only once that is durable; a link closed meanwhile detaches it.
        self._core.breakers.attach(agent_id, name, breaker)
        if self._core.forced_circuits.is_forced(agent_id):  # until ResetCircuit, restarts too
            self._core.breakers.force_open(agent_id, "still forced open from before it reconnected")
        await done
        if not session.closed:
            self._core.scheduler.add_agent(agent_id, self.pools_of(agent), capacity)
            self._core.scheduler.set_score(agent_id, self._core.reflex.preference(agent_id))
            if agent_id in self._drain_on_connect:  # before any dispatch can lease to it
                self._drain_on_connect.discard(agent_id)
                self.drain_agent(agent_id)
            self._core.metrics.agents_connected.set(len(self.sessions))
            self._core.schedule_dispatch()
        log.info(
            "agent connected",
            extra={"agent_id": agent_id, "agent": name, "role": hello.role, "resumed": resumed},
        )
        return session

    def on_agent_message(self, session: AgentSession, message: link_pb2.AgentMessage) -> None:
        """Folds in what an agent reported: results, progress, logs, drain, releases."""
        if session.closed:
            return
        session.last_seen = time.monotonic()
        agent = self._core.state.agents[session.agent_id]
        agent.last_seen = time.time()
        batch: list[event_pb2.Event] = []
        changed: list[TaskRecord] = []
        for result in message.results:
            task = self._current_task(session, result.task_id, result.attempt_id)
            if task is None:
                self._counted["stale"].inc()
                log.debug(
                    "dropped stale result",
                    extra={"task_id": result.task_id, "attempt_id": result.attempt_id},
                )
                continue
            del session.leases[result.attempt_id]
            self._core.scheduler.release(session.agent_id)
            failed = result.WhichOneof("outcome") == "error"
            self._core.breakers.record(
                session.agent_id, not failed, result.duration.ToNanoseconds() / 1e9
            )
            if failed:
                error = result.error
                final = not error.retryable or task.failures + 1 >= task.max_attempts
                event = events.task_attempt_failed(
                    task.id, result.attempt_id, session.agent_id, error, final
                )
                self._counted["failed"].inc()
            else:
                event = events.task_succeeded(
                    task.id,
                    result.attempt_id,
                    session.agent_id,
                    result.output if result.HasField("output") else None,
                )
                self._counted["succeeded"].inc()
            self._core.state.apply(event)
            # Journalled as applied (it joins the same write): a breaker transition
            # a later result causes is recorded after this one, as it happened.
            self._core.journal.add([event])
            batch.append(event)
            if task.state == Task.STATE_QUEUED:
                self._core.retry_later(task)
            changed.append(task)
        for attempt_id in message.released_attempt_ids:
            task_id = session.leases.get(attempt_id)
            task = self._current_task(session, task_id or "", attempt_id)
            if task is None:
                continue
            self._core.end_lease(session.agent_id, attempt_id)
            event = events.task_requeued(
                task.id, attempt_id, session.agent_id, "released by agent", lost=False
            )
            self._core.state.apply(event)
            self._core.journal.add([event])
            batch.append(event)
            self._core.metrics.requeued.labels("released").inc()
            self._core.enqueue(task)
            changed.append(task)
        for progress in message.progress:
            task = self._current_task(session, progress.task_id, progress.attempt_id)
            if task is not None:
                report = task_pb2.TaskProgressReport(
                    fraction=progress.fraction, message=progress.message
                )
                report.time.GetCurrentTime()
                task.progress = report
                changed.append(task)
        for line in message.logs:
            log.debug(
                "agent log",
                extra={
                    "agent": session.name,
                    "task_id": line.task_id,
                    "agent_level": line.level,
                    "text": line.message,
                },
            )
        for event in self._core.reflex.write_memory(session.agent_id, message.memory_writes):
            self._core.state.apply(event)
            self._core.journal.add([event])
            batch.append(event)
        if message.draining and not session.draining:
            session.draining = True
            agent.state = Agent.STATE_DRAINING
            self._core.scheduler.remove_agent(session.agent_id)
            for listener in self._core.state.agent_listeners:  # no event: tell WatchAgents
                listener(agent)
        if batch:
            self._core.run_pattern_actions()
            self._core.schedule_dispatch()
            self._core.lease_ended.set()
        for task in changed:
            self._core.notify(task)

    def circuit_changed(self, agent_id: str, change: Transition, comment: str) -> None:
        """Records a breaker's change of state as an event, and logs it."""
        event = events.agent_circuit_changed(
            agent_id, change.from_state.value, change.to_state.value, change.reason.value, comment
        )
        self._core.state.apply(event)
        self._core.journal.add([event], urgent=False)
        log.warning(
            "circuit breaker changed",
            extra={
                "agent_id": agent_id,
                "from": change.from_state.value,
                "to": change.to_state.value,
                "reason": change.reason.value,
            },
        )

    def probe_due(self, agent_id: str) -> None:
        """An open breaker's timeout ran out: its agent may take trial tasks."""
        self._core.scheduler.wake(agent_id)
        self._core.schedule_dispatch()

    def _current_task(
        self, session: AgentSession, task_id: str, attempt_id: str
    ) -> TaskRecord | None:
        if session.leases.get(attempt_id) != task_id:
            return None
        task = self._core.state.tasks.get(task_id)
        if task is None or task.state != Task.STATE_RUNNING or task.attempt_id != attempt_id:
            # A lease whose attempt is over: its slot frees up too, or the agent would
            # look busier than it is for good.
            self._core.end_lease(session.agent_id, attempt_id)
            return None
        return task

    def close_session(self, session: AgentSession, reason: str) -> None:
        """Ends an agent's link; unless the coordinator is stopping, its leases go back
        to the queue as lost attempts."""
        if self.sessions.get(session.agent_id) is not session:
            session.close(reason)
            return
        session.close(reason)
        del self.sessions[session.agent_id]
        if self._named.get(session.name) is session:
            del self._named[session.name]
        self._core.scheduler.remove_agent(session.agent_id)
        self._core.bulkheads.leave(session.agent_id)
        self._core.breakers.detach(session.agent_id)
        agent = self._core.state.agents.get(session.agent_id)
        if agent is not None:
            agent.sample = None
        self._core.metrics.agents_connected.set(len(self.sessions))
        if self._core.stopping:
            return
        batch: list[event_pb2.Event] = []
        requeued: list[TaskRecord] = []
        for attempt_id, task_id in session.leases.items():
            task = self._core.state.tasks.get(task_id)
            if task is None or task.state != Task.STATE_RUNNING or task.attempt_id != attempt_id:
                continue
            final = task.failures + 1 >= task.max_attempts
            if final:
                error = task_pb2.TaskError(
                    code="AGENT_LOST", message=f"agent {session.name} was lost: {reason}"
                )
                batch.append(
                    events.task_attempt_failed(
                        task_id, attempt_id, session.agent_id, error, final=True
                    )
                )
            else:
                batch.append(
                    events.task_requeued(
                        task_id, attempt_id, session.agent_id, f"agent lost: {reason}", lost=True
                    )
                )
                self._core.metrics.requeued.labels("agent_lost").inc()
            requeued.append(task)
        session.leases.clear()
        batch.append(events.agent_disconnected(session.agent_id, reason))
        self._core.record(batch)
        for task in requeued:
            if task.state == Task.STATE_QUEUED:
                self._core.enqueue(task)
            self._core.notify(task)
        log.info(
            "agent disconnected",
            extra={"agent_id": session.agent_id, "agent": session.name, "reason": reason},
        )

    def pools_of(self, agent: AgentRecord) -> list[str]:
        """The pools an agent serves: a swarm agent only its swarm's; only its
        partitions' when it joined any (so no other work takes capacity a partition
        counts on), else its role, actions and queues."""
        swarm = self._core.swarms.pools_of(agent.id)
        if swarm is not None:
            return swarm
        partitions = self._core.bulkheads.pools_of(agent.id)
        return partitions if partitions is not None else agent.pools()

    def refresh_pools(self, agent_id: str) -> None:
        """Re-registers a connected agent's pools after its partitions changed (a
        bulkhead was deleted), keeping its free slots."""
        session = self.sessions.get(agent_id)
        agent = self._core.state.agents.get(agent_id)
        if session is None or agent is None or session.draining:
            return
        free = self._core.scheduler.free_slots(agent_id)
        self._core.scheduler.add_agent(agent_id, self.pools_of(agent), free)
        self._core.schedule_dispatch()

    def drain_agent(self, agent_id: str) -> None:
        """Gives an agent no more work and asks it to finish what it runs and disconnect
        (the link's drain). An agent without a link yet (a spawned process still
        starting) is drained as soon as it connects: otherwise it would come up READY
        and take work after its swarm let it go."""
        session = self.sessions.get(agent_id)
        if session is None:
            self._drain_on_connect.add(agent_id)
            return
        if not session.draining:
            session.draining = True
            self._core.state.agents[agent_id].state = Agent.STATE_DRAINING
            self._core.scheduler.remove_agent(agent_id)
            session.send_drain()

    def forget_drain(self, agent_id: str) -> None:
        """Drops a drain kept for an agent that will not connect now (its process is
        gone), so that such drains do not pile up over a long-lived coordinator."""
        self._drain_on_connect.discard(agent_id)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
