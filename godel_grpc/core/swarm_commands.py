"""SwarmService's behaviour, and the loop that scales swarms.

Commands create and delete swarms and admit their tasks (ordinary tasks targeting
``swarm:ID``, durable before the reply like SubmitTask). The loop wakes every
`interval` seconds and, for each swarm:

* records members whose process is gone as stopped (crashed, or not running after a
  coordinator restart: processes are the coordinator's children);
* stops drained members once they hold no lease (a draining member takes no new work
  and finishes what it runs: a busy agent is never killed);
* asks the swarm's autoscaler (`patterns.autoscale`) for a size, and carries out a
  decision: a ``swarm.scaled`` event with the metric values, then spawned agents (up)
  or drained ones (down, not-yet-connected and idle agents first).

Agents are started on the coordinator's runtime (the local one starts ``godel agent``
processes, as SpawnAgent does) from the swarm's agent template; an empty `exec` means
the coordinator's ``--agent-exec`` default.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import event_pb2, swarm_pb2, swarm_service_pb2, task_pb2
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.auth.scopes import AGENT
from godel_grpc.core import events, pool_routing
from godel_grpc.core.breakers import breaker_settings
from godel_grpc.core.paging import page_of
from godel_grpc.core.pool_routing import carry_target
from godel_grpc.core.records import timestamp
from godel_grpc.core.swarms import (
    MEMBER_LABEL,
    Member,
    SwarmManager,
    SwarmRecord,
)
from godel_grpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from godel_grpc.patterns.autoscale import Decision, ScalePolicy
from godel_grpc.runtime.base import AgentLaunch, Phase, Runtime, SpawnFailed

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

log = logging.getLogger(__name__)

SCALE_INTERVAL = 0.5
"""Seconds between two autoscaler evaluations of every swarm."""
STOP_GRACE = 10.0
"""Seconds a drained, idle agent gets to exit on SIGTERM before SIGKILL."""
MAX_SWARM_AGENTS = 256
"""Largest max_agents: what the local runtime runs at once."""


class SwarmCommands:
    """The SwarmService's behaviour and the scaling loop, on top of the coordinator."""

    def __init__(
        self,
        coordinator: Coordinator,
        runtime: Runtime | None,
        *,
        interval: float = SCALE_INTERVAL,
        clock: Callable[[], float] = time.time,
        credentials: AgentCredentials | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._runtime = runtime
        self._credentials = credentials
        """Mints each swarm agent a token bound to it (agent scope only) when
        authentication is on."""
        self._interval = interval
        self._clock = clock
        self._ids = itertools.count(1)
        self._busy: set[str] = set()
        """Members being spawned or stopped right now: the reaper leaves them alone."""
        self._stoppers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._step_lock = asyncio.Lock()

    @property
    def _manager(self) -> SwarmManager:
        return self._coordinator.swarms

    def _get(self, swarm_id: str) -> SwarmRecord:
        record = self._manager.swarms.get(swarm_id)
        if record is None:
            raise NotFound("swarm", swarm_id)
        return record

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the scaling loop (once the runtime knows the coordinator's address)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="swarms")

    async def stop(self) -> None:
        """Stops the scaling loop; the runtime stops the agents when it closes."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        for stopper in list(self._stoppers):
            stopper.cancel()
        await asyncio.gather(*self._stoppers, return_exceptions=True)

    async def _run(self) -> None:
        while not self._coordinator.stopping:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not stop scaling for good
                log.exception("swarm scaling round failed")
            await asyncio.sleep(self._interval)

    # -- commands ----------------------------------------------------------------------

    async def create(self, request: swarm_service_pb2.CreateSwarmRequest) -> swarm_pb2.Swarm:
        """Validates and records the swarm, then starts its `min_agents` agents."""
        given = request.scale_policy
        policy = ScalePolicy.from_request(
            min_agents=request.min_agents,
            max_agents=request.max_agents,
            target=given.target,
            scale_up_threshold=given.scale_up_threshold,
            scale_down_threshold=given.scale_down_threshold,
        )
        problems = [FieldViolation(v.path, v.description) for v in policy.violations()]
        if policy.max_agents > MAX_SWARM_AGENTS:
            problems.append(
                FieldViolation("maxAgents", f"the runtime runs at most {MAX_SWARM_AGENTS} agents")
            )
        template = request.agent_template
        if template.HasField("circuit_breaker"):
            try:  # refused now, not in each agent's hello
                breaker_settings(template.circuit_breaker, "agentTemplate.circuitBreaker")
            except InvalidArgument as refused:
                problems.extend(refused.violations)
        if problems:
            raise InvalidArgument(problems)
        if request.name in self._manager.by_name:
            raise AlreadyExists(f"a swarm named {request.name!r} already exists")
        coordinator = self._coordinator
        coordinator.require_open()
        if self._runtime is None:
            raise FailedPrecondition(
                "this coordinator has no runtime to start swarm agents with",
                subject="swarms",
                reason="NO_RUNTIME",
            )
        swarm = swarm_pb2.Swarm(
            id=f"sw-{coordinator.state.epoch}-{next(self._ids)}",
            name=request.name,
            min_agents=policy.min_agents,
            max_agents=policy.max_agents,
            scale_policy=request.scale_policy,
            agent_template=request.agent_template,
            labels=request.labels,
        )
        swarm.scale_policy.metric = swarm.scale_policy.metric or "queue_depth"
        swarm.agent_template.role = swarm.agent_template.role or request.name
        swarm.agent_template.capacity = swarm.agent_template.capacity or 1
        await coordinator.record([events.swarm_created(swarm)])
        record = self._get(swarm.id)
        await self.step_swarm(record)  # its first agents start before the reply
        return self.get(swarm.id)

    def get(self, swarm_id: str) -> swarm_pb2.Swarm:
        return self._manager.to_proto(self._get(swarm_id))

    def list(self, page_size: int, page_token: str) -> tuple[list[swarm_pb2.Swarm], str]:
        """Swarms, oldest first."""
        return page_of(
            list(self._manager.swarms.values()),
            lambda record: record.swarm.id,
            self._manager.to_proto,
            page_size,
            page_token,
        )

    async def submit(self, request: swarm_service_pb2.SubmitSwarmTaskRequest) -> task_pb2.Task:
        """Queues one task on the swarm's pool; returns it once durable."""
        coordinator = self._coordinator
        coordinator.require_open()
        record = self._get(request.swarm_id)
        if request.HasField("deadline") and request.deadline.ToNanoseconds() / 1e9 <= time.time():
            raise InvalidArgument([FieldViolation("deadline", "is in the past")])
        repeat = coordinator.repeat_of(request.idempotency_key)
        if repeat is not None:
            return await repeat
        event = coordinator.accept_task(request, shape=lambda spec: _route(spec, record))
        await coordinator.commit([event])
        return event.task_submitted.task

    async def delete(self, swarm_id: str) -> None:
        """Cancels the swarm's waiting tasks, drains its agents (the loop stops them
        once idle) and forgets the swarm; running tasks finish."""
        record = self._get(swarm_id)
        coordinator = self._coordinator
        coordinator.require_open()
        batch: list[event_pb2.Event] = []
        for task_id in self._manager.queued_task_ids(record):
            task = coordinator.state.tasks.get(task_id)
            if task is not None and not task.terminal:
                batch.append(coordinator.cancel_applied(task, f"swarm {record.swarm.name} deleted"))
        # Applied here, not only journaled: the reaper stops a member once memory shows
        # it draining, and records why it stopped from the same mark.
        parting = [
            self._drain(member, "swarm deleted")
            for member in record.members.values()
            if member.draining is None
        ]
        parting.append(events.swarm_deleted(swarm_id))
        for event in parting:
            coordinator.state.apply(event)
        await coordinator.commit(batch + parting)

    # -- scaling -----------------------------------------------------------------------

    async def step(self) -> None:
        """One round: reap and stop members, then evaluate every swarm."""
        self._reap()
        for record in list(self._manager.swarms.values()):
            await self.step_swarm(record)

    async def step_swarm(self, record: SwarmRecord) -> None:
        """Evaluates one swarm and carries out what its autoscaler decides."""
        async with self._step_lock:
            if record.deleted or self._coordinator.stopping:
                return
            decision = record.autoscaler.evaluate(self._clock(), record.observation())
            if decision is None:
                return
            self._coordinator.record([events.swarm_scaled(record.id, _proto(decision))])
            self._coordinator.metrics.swarm_scale_events.labels(
                decision.direction, decision.trigger
            ).inc()
            log.info(
                "swarm scaled",
                extra={"swarm": record.swarm.name, "reason": decision.reason},
            )
            change = decision.to_agents - decision.from_agents
            if change > 0:
                await asyncio.gather(*(self._spawn(record) for _ in range(change)))
            else:
                self._scale_down(record, -change)

    def _scale_down(self, record: SwarmRecord, count: int) -> None:
        """Drains `count` members: not yet connected first, then the least busy."""
        sessions = self._coordinator.sessions

        def busy(member: Member) -> tuple[int, int]:
            session = sessions.get(member.agent_id)
            return (0, 0) if session is None else (1, len(session.leases))

        victims = sorted(record.active(), key=busy)[:count]
        self._coordinator.record([self._drain(member, "scale down") for member in victims])

    def _drain(self, member: Member, reason: str) -> event_pb2.Event:
        """The draining event for a member (for the caller to record), its link told to
        take no more work."""
        event = events.swarm_agent_draining(member.swarm_id, member.agent_id, reason)
        self._coordinator.links.drain_agent(member.agent_id)
        return event

    async def _spawn(self, record: SwarmRecord) -> None:
        """Starts one agent for the swarm. Its membership is recorded before the process
        starts, so its hello already finds it in the swarm."""
        assert self._runtime is not None
        coordinator = self._coordinator
        template = record.swarm.agent_template
        name = f"{record.swarm.name}-{secrets.token_hex(3)}"
        agent_id = f"ag-{coordinator.state.epoch}-w{secrets.token_hex(4)}"
        token = (
            await self._credentials.mint(agent_id, name, frozenset({AGENT}))
            if self._credentials is not None
            else ""
        )
        if record.deleted or coordinator.stopping:
            # Deleted while the token was being written: the swarm would not know this
            # member, so nothing would ever stop its process.
            if self._credentials is not None:
                await self._credentials.revoke(agent_id)
            return
        launch = AgentLaunch(
            agent_id=agent_id,
            name=name,
            role=template.role or record.swarm.name,
            capacity=template.capacity or 1,
            labels={**template.labels, MEMBER_LABEL: record.swarm.name},
            exec_command=template.exec,
            circuit_breaker_json=(
                json_format.MessageToJson(template.circuit_breaker, indent=None)
                if template.HasField("circuit_breaker")
                else ""
            ),
            token=token,
        )
        coordinator.spawned_ids[name] = agent_id
        self._busy.add(agent_id)
        try:
            coordinator.record([events.swarm_agent_started(record.id, agent_id, name)])
            await self._runtime.spawn(launch)
        except SpawnFailed as exc:
            log.warning("swarm agent failed to start", extra={"agent": name, "error": str(exc)})
            coordinator.spawned_ids.pop(name, None)
            coordinator.links.forget_drain(agent_id)
            coordinator.record(
                [events.swarm_agent_stopped(record.id, agent_id, f"spawn failed: {exc}")]
            )
        finally:
            self._busy.discard(agent_id)

    def _reap(self) -> None:
        """Records members whose process is gone; stops drained members that are idle."""
        assert self._runtime is not None or not self._manager.members
        batch: list[event_pb2.Event] = []
        for member in list(self._manager.members.values()):
            if member.agent_id in self._busy or self._runtime is None:
                continue
            handle = self._runtime.get(member.agent_id)
            if handle is None or handle.phase is Phase.STOPPED:
                if handle is None:
                    reason = "not running after a coordinator restart"
                elif member.draining is not None:
                    reason = "drained"
                else:
                    reason = f"process exited with code {handle.exit_code}"
                batch.append(events.swarm_agent_stopped(member.swarm_id, member.agent_id, reason))
                self._coordinator.spawned_ids.pop(member.name, None)
                self._coordinator.links.forget_drain(member.agent_id)
                continue
            if member.draining is None:
                continue
            session = self._coordinator.sessions.get(member.agent_id)
            if session is not None and session.leases:
                continue  # still finishing its work
            self._busy.add(member.agent_id)
            stopper = asyncio.get_running_loop().create_task(self._stop(member.agent_id))
            self._stoppers.add(stopper)
            stopper.add_done_callback(self._stoppers.discard)
        if batch:
            self._coordinator.record(batch)

    async def _stop(self, agent_id: str) -> None:
        """Stops a drained, idle agent's process; the next round records it stopped."""
        assert self._runtime is not None
        try:
            await self._runtime.terminate(agent_id, STOP_GRACE)
        except KeyError:
            pass
        finally:
            self._busy.discard(agent_id)
            if self._credentials is not None:
                await self._credentials.revoke(agent_id)


def _route(spec: task_pb2.Task, record: SwarmRecord) -> None:
    """Targets a new task at its swarm's pool (see `pool_routing`)."""
    carry_target(spec, pool_routing.SWARM, record.swarm.agent_template.role)
    spec.swarm = record.id


def _proto(decision: Decision) -> swarm_pb2.SwarmScaleEvent:
    """A decision as recorded and shown."""
    observation = decision.observation
    return swarm_pb2.SwarmScaleEvent(
        time=timestamp(decision.time),
        from_agents=decision.from_agents,
        to_agents=decision.to_agents,
        reason=decision.reason,
        metric_value=observation.metric,
        queued=observation.queued,
        in_flight=observation.in_flight,
        load=decision.load,
        recommended_agents=decision.recommended,
        trigger=decision.trigger,
    )
