"""An async Python client in the shape of the seed's calls (`client.tasks.submit`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from godel_grpc._proto.godel.v1 import (
    agent_pb2,
    bulkhead_pb2,
    convoy_pb2,
    event_pb2,
    queue_pb2,
    saga_pb2,
    swarm_pb2,
    task_pb2,
)
from godel_grpc._proto.godel.v1 import agent_service_pb2 as agent_pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as agent_grpc
from godel_grpc._proto.godel.v1 import bulkhead_service_pb2 as bulkhead_pb
from godel_grpc._proto.godel.v1 import bulkhead_service_pb2_grpc as bulkhead_grpc
from godel_grpc._proto.godel.v1 import convoy_service_pb2 as convoy_pb
from godel_grpc._proto.godel.v1 import convoy_service_pb2_grpc as convoy_grpc
from godel_grpc._proto.godel.v1 import event_service_pb2 as event_pb
from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as event_grpc
from godel_grpc._proto.godel.v1 import queue_service_pb2 as queue_pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as queue_grpc
from godel_grpc._proto.godel.v1 import saga_service_pb2 as saga_pb
from godel_grpc._proto.godel.v1 import saga_service_pb2_grpc as saga_grpc
from godel_grpc._proto.godel.v1 import swarm_service_pb2 as swarm_pb
from godel_grpc._proto.godel.v1 import swarm_service_pb2_grpc as swarm_grpc
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.auth.channel import open_channel
from godel_grpc.client._errors import RPCError, streamed, translated
from godel_grpc.client._workflows import Workflows
from godel_grpc.core.fields import copy_common_fields

DEFAULT_TIMEOUT = 30.0
"""Seconds every unary call may take unless the caller says otherwise."""

TERMINAL_STATES = frozenset(
    {task_pb2.Task.STATE_SUCCEEDED, task_pb2.Task.STATE_FAILED, task_pb2.Task.STATE_CANCELLED}
)


RECONNECT_FOR = 60.0
"""Seconds a resuming stream keeps trying to reach a coordinator before giving up."""


class _Backoff:
    """Waits between reconnects: 0.1 s doubling to 2 s, for at most `limit` seconds
    since the last success."""

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        self._delay = 0.1
        self._since = time.monotonic()

    async def wait(self) -> bool:
        """Sleeps before the next attempt; False once the time is up."""
        if time.monotonic() - self._since >= self._limit:
            return False
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 2.0)
        return True


async def _every_page(fetch: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
    """Every item of a paged List RPC: `fetch(token)` makes one call, `field` names the
    response's repeated field."""
    items: list[Any] = []
    token = ""
    while True:
        response = await fetch(token)
        items.extend(getattr(response, field))
        token = response.next_page_token
        if not token:
            return items


def task_request(
    *,
    role: str = "",
    action: str = "",
    title: str = "",
    priority: str = "",
    payload: Mapping[str, Any] | None = None,
    idempotency_key: str = "",
    timeout: float | None = None,
    deadline: float | None = None,
    max_attempts: int = 0,
    labels: Mapping[str, str] | None = None,
) -> task_pb.SubmitTaskRequest:
    """Builds a SubmitTaskRequest; `timeout` in seconds, `deadline` as Unix seconds."""
    request = task_pb.SubmitTaskRequest(
        title=title,
        priority=priority,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        labels=dict(labels or {}),
    )
    if role:
        request.role = role
    if action:
        request.action = action
    if payload is not None:
        request.payload.update(dict(payload))
    if timeout is not None:
        request.timeout.FromNanoseconds(int(timeout * 1e9))
    if deadline is not None:
        request.deadline.FromNanoseconds(int(deadline * 1e9))
    return request


class Tasks:
    """`client.tasks`: submit, follow and cancel tasks."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = task_grpc.TaskServiceStub(channel)
        self._timeout = timeout

    @translated
    async def submit(self, **fields: Any) -> task_pb2.Task:
        """Submits one task (keyword arguments of `task_request`) and returns it, durable."""
        response = await self._stub.SubmitTask(task_request(**fields), timeout=self._timeout)
        return response.task

    @translated
    async def run(self, *, wait_timeout: float | None = None, **fields: Any) -> task_pb2.Task:
        """Submits one task and returns it once it has ended (one call, one round trip).

        Args:
            wait_timeout: seconds to wait for the end; None waits as long as it takes.
            **fields: keyword arguments of `task_request`.
        """
        response = await self._stub.RunTask(
            task_pb.RunTaskRequest(task=task_request(**fields)), timeout=wait_timeout
        )
        return response.task

    @translated
    async def submit_many(
        self, requests: Sequence[task_pb.SubmitTaskRequest]
    ) -> list[task_pb2.Task]:
        """Submits up to 1,000 tasks in one call and one durable write."""
        response = await self._stub.SubmitTasks(
            task_pb.SubmitTasksRequest(requests=requests), timeout=self._timeout
        )
        return list(response.tasks)

    @translated
    async def get(self, task_id: str) -> task_pb2.Task:
        """The task with this id."""
        response = await self._stub.GetTask(
            task_pb.GetTaskRequest(id=task_id), timeout=self._timeout
        )
        return response.task

    @translated
    async def list(
        self, page_size: int = 100, page_token: str = "", state: int = 0
    ) -> tuple[list[task_pb2.Task], str]:
        """A page of tasks, newest first, and the next page's token."""
        response = await self._stub.ListTasks(
            task_pb.ListTasksRequest(page_size=page_size, page_token=page_token, state=state),  # type: ignore[arg-type]
            timeout=self._timeout,
        )
        return list(response.tasks), response.next_page_token

    @translated
    async def cancel(self, task_id: str, reason: str = "") -> task_pb2.Task:
        """Cancels a queued or running task."""
        response = await self._stub.CancelTask(
            task_pb.CancelTaskRequest(id=task_id, reason=reason), timeout=self._timeout
        )
        return response.task

    def watch(self, task_id: str, timeout: float | None = None) -> AsyncIterator[task_pb2.Task]:
        """The task now and after every change, until it ends (or `timeout` seconds)."""
        call = self._stub.WatchTask(task_pb.WatchTaskRequest(id=task_id), timeout=timeout)
        return streamed(call, "task")

    async def wait(self, task_id: str, timeout: float | None = None) -> task_pb2.Task:
        """Waits until the task ends and returns it."""
        last: task_pb2.Task | None = None
        async for task in self.watch(task_id, timeout=timeout):
            last = task
        assert last is not None
        return last


class Agents:
    """`client.agents`: the fleet."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = agent_grpc.AgentServiceStub(channel)
        self._timeout = timeout

    @translated
    async def spawn(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> agent_pb2.Agent:
        """Starts an agent process through the coordinator's runtime, from the seed's
        spawn object (`role`, `circuitBreaker`, `reflex`, `sidecars`, ...) as a mapping
        or keywords; returns it in state STARTING."""
        request = json_format.ParseDict({**(spec or {}), **fields}, agent_pb.SpawnAgentRequest())
        response = await self._stub.SpawnAgent(request, timeout=self._timeout)
        return response.agent

    @translated
    async def terminate(
        self, agent_id: str, reason: str = "", grace_period: float | None = None
    ) -> agent_pb2.Agent:
        """Stops an agent: no new work, its running attempts get `grace_period` seconds
        (default 30), then its process and sidecars stop."""
        request = agent_pb.TerminateAgentRequest(id=agent_id, reason=reason)
        if grace_period is not None:
            request.grace_period.FromNanoseconds(int(grace_period * 1e9))
        response = await self._stub.TerminateAgent(request, timeout=self._timeout)
        return response.agent

    @translated
    async def get(self, agent_id: str) -> agent_pb2.Agent:
        """The agent with this id."""
        response = await self._stub.GetAgent(
            agent_pb.GetAgentRequest(id=agent_id), timeout=self._timeout
        )
        return response.agent

    @translated
    async def feedback(
        self, agent_id: str, feedback: Mapping[str, Any] | None = None, **fields: Any
    ) -> agent_pb.SubmitFeedbackResponse:
        """Rates an agent's work with the seed's object (`taskId`, `rating` 0 to 5,
        `comments`), given as a mapping or keyword arguments; returns the agent's score
        after it."""
        request = json_format.ParseDict(
            {**(feedback or {}), **fields}, agent_pb.SubmitFeedbackRequest()
        )
        request.agent_id = agent_id
        return await self._stub.SubmitFeedback(request, timeout=self._timeout)

    @translated
    async def get_circuit_state(self, agent_id: str) -> agent_pb.GetCircuitStateResponse:
        """The agent's circuit breaker: state, counts, opened-at and next probe time."""
        return await self._stub.GetCircuitState(
            agent_pb.GetCircuitStateRequest(agent_id=agent_id), timeout=self._timeout
        )

    @translated
    async def replay(
        self, agent: str | Sequence[event_pb2.Event], up_to_event_id: int = 0
    ) -> agent_pb.AgentReplayState:
        """The agent's state as of event `up_to_event_id` (0: the latest), rebuilt from
        the log. `agent` is its id, or, as in the seed, the events `events.get_for_agent`
        returned (their agent is the one replayed)."""
        if not isinstance(agent, str):
            ids = {event.agent_id for event in agent}
            if len(ids) != 1:
                raise ValueError("replay needs the events of exactly one agent")
            (agent,) = ids
        response = await self._stub.ReplayAgent(
            agent_pb.ReplayAgentRequest(agent_id=agent, up_to_event_id=up_to_event_id),
            timeout=self._timeout,
        )
        return response.state

    def watch(
        self, role: str = "", agent_ids: Sequence[str] = ()
    ) -> AsyncIterator[agent_pb2.Agent]:
        """Every matching agent as it is now, then each agent again on every change,
        until the caller stops iterating."""
        call = self._stub.WatchAgents(agent_pb.WatchAgentsRequest(role=role, agent_ids=agent_ids))
        return streamed(call, "agent")

    @translated
    async def force_open_circuit(
        self, agent_id: str, reason: str = ""
    ) -> agent_pb.GetCircuitStateResponse:
        """Holds the agent's breaker open (no dispatch, no trials) until
        `reset_circuit`; returns the breaker once the change is durable."""
        response = await self._stub.ForceOpenCircuit(
            agent_pb.ForceOpenCircuitRequest(agent_id=agent_id, reason=reason),
            timeout=self._timeout,
        )
        return response.circuit

    @translated
    async def reset_circuit(
        self, agent_id: str, reason: str = ""
    ) -> agent_pb.GetCircuitStateResponse:
        """Closes the agent's breaker, forced or not, forgetting its recent failures."""
        response = await self._stub.ResetCircuit(
            agent_pb.ResetCircuitRequest(agent_id=agent_id, reason=reason), timeout=self._timeout
        )
        return response.circuit

    async def wait_ready(
        self, agent_id: str, timeout: float = 30.0, interval: float = 0.05
    ) -> agent_pb2.Agent:
        """Waits until the agent's link is up (READY), as after a spawn, and returns it.

        Raises:
            TimeoutError: it was not READY within `timeout` seconds.
            RPCError: the agent is unknown or was terminated meanwhile.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            agent = await self.get(agent_id)
            if agent.state == agent_pb2.Agent.STATE_READY:
                return agent
            if agent.state == agent_pb2.Agent.STATE_TERMINATED:
                raise RPCError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"agent {agent_id} was terminated", []
                )
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"agent {agent_id} was not READY within {timeout:g} s")
            await asyncio.sleep(interval)

    @translated
    async def list(self, role: str = "") -> list[agent_pb2.Agent]:
        """Every registered agent (all pages), optionally of one role."""
        return await _every_page(
            lambda token: self._stub.ListAgents(
                agent_pb.ListAgentsRequest(page_size=1000, page_token=token, role=role),
                timeout=self._timeout,
            ),
            "agents",
        )


class Events:
    """`client.events`: the coordinator's event log."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = event_grpc.EventServiceStub(channel)
        self._timeout = timeout

    @translated
    async def get_for_agent(self, agent_id: str, page_size: int = 1000) -> list[event_pb2.Event]:
        """Every event that concerns the agent, oldest first (all pages)."""
        return await _every_page(
            lambda token: self._stub.ListAgentEvents(
                event_pb.ListAgentEventsRequest(
                    agent_id=agent_id, page_size=page_size, page_token=token
                ),
                timeout=self._timeout,
            ),
            "events",
        )

    async def subscribe(
        self,
        after_id: int = 0,
        types: Sequence[str] = (),
        stream: str = "",
        *,
        reconnect_for: float = RECONNECT_FOR,
    ) -> AsyncIterator[event_pb.SubscribeEventsResponse]:
        """Every event after `after_id`: recorded ones first, then live ones.

        When the coordinator goes away (UNAVAILABLE: restart, failover, dropped
        connection) the subscription reconnects by itself and resumes after the last
        event it delivered, so the caller sees every event once, in order. It gives up
        with the RPCError after `reconnect_for` seconds without reaching a coordinator.
        """
        position = after_id
        retry = _Backoff(reconnect_for)
        while True:
            call = self._stub.SubscribeEvents(
                event_pb.SubscribeEventsRequest(after_id=position, types=types, stream=stream)
            )
            try:
                async for response in call:
                    retry.reset()
                    position = response.event.id
                    yield response
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or not await retry.wait():
                    raise RPCError.from_aio(error) from None
            finally:
                call.cancel()


class ConvoyHandle:
    """A created convoy: its latest known state and the calls that act on it."""

    def __init__(self, convoys: Convoys, convoy: convoy_pb2.Convoy) -> None:
        self._convoys = convoys
        self.convoy = convoy

    @property
    def id(self) -> str:
        return self.convoy.id

    @property
    def agents(self) -> Sequence[convoy_pb2.ConvoyNode]:
        """The nodes (the seed calls them agents)."""
        return list(self.convoy.agents)

    @property
    def dependencies(self) -> Sequence[convoy_pb2.ConvoyDependency]:
        """Every dependency edge (node, depends_on)."""
        return list(self.convoy.dependencies)

    async def start(self) -> convoy_pb2.Convoy:
        """Starts the convoy: nodes without dependencies are dispatched at once."""
        self.convoy = await self._convoys.start(self.id)
        return self.convoy

    async def get(self) -> convoy_pb2.Convoy:
        """Refreshes and returns the convoy."""
        self.convoy = await self._convoys.get(self.id)
        return self.convoy

    async def cancel(self, reason: str = "") -> convoy_pb2.Convoy:
        """Cancels every node that has not ended."""
        self.convoy = await self._convoys.cancel(self.id, reason)
        return self.convoy

    async def wait(self, timeout: float | None = None) -> convoy_pb2.Convoy:
        """Waits until the convoy ends and returns it."""
        async for convoy in self._convoys.watch(self.id, timeout=timeout):
            self.convoy = convoy
        return self.convoy


class Convoys:
    """`client.convoys`: dependency-ordered teams of agents."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = convoy_grpc.ConvoyServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> ConvoyHandle:
        """Creates a convoy from the seed's object (`name`, `pattern`, `agents` with
        `role`, `task`, `dependsOn`), given as a mapping or keyword arguments."""
        request = json_format.ParseDict({**(spec or {}), **fields}, convoy_pb.CreateConvoyRequest())
        response = await self._stub.CreateConvoy(request, timeout=self._timeout)
        return ConvoyHandle(self, response.convoy)

    @translated
    async def start(self, convoy_id: str) -> convoy_pb2.Convoy:
        response = await self._stub.StartConvoy(
            convoy_pb.StartConvoyRequest(id=convoy_id), timeout=self._timeout
        )
        return response.convoy

    @translated
    async def get(self, convoy_id: str) -> convoy_pb2.Convoy:
        response = await self._stub.GetConvoy(
            convoy_pb.GetConvoyRequest(id=convoy_id), timeout=self._timeout
        )
        return response.convoy

    @translated
    async def cancel(self, convoy_id: str, reason: str = "") -> convoy_pb2.Convoy:
        response = await self._stub.CancelConvoy(
            convoy_pb.CancelConvoyRequest(id=convoy_id, reason=reason), timeout=self._timeout
        )
        return response.convoy

    def watch(
        self, convoy_id: str, timeout: float | None = None
    ) -> AsyncIterator[convoy_pb2.Convoy]:
        """The convoy now and after every change, until it ends."""
        call = self._stub.WatchConvoy(convoy_pb.WatchConvoyRequest(id=convoy_id), timeout=timeout)
        return streamed(call, "convoy")


class SagaHandle:
    """A created saga: its latest known state and the calls that act on it."""

    def __init__(self, sagas: Sagas, saga: saga_pb2.Saga) -> None:
        self._sagas = sagas
        self.saga = saga

    @property
    def id(self) -> str:
        return self.saga.id

    @property
    def steps(self) -> Sequence[saga_pb2.SagaStep]:
        """The steps, in execution order, as last seen."""
        return list(self.saga.steps)

    async def execute(
        self, input: Mapping[str, Any] | None = None, *, manual_compensation: bool = False
    ) -> saga_pb2.Saga:
        """Starts the saga and returns it RUNNING; `wait()` follows it to its end. With
        `manual_compensation`, a failed step waits (FAILED) for `compensate()`."""
        self.saga = await self._sagas.execute(
            self.id, input, manual_compensation=manual_compensation
        )
        return self.saga

    async def compensate(self, reason: str = "") -> saga_pb2.Saga:
        """Rolls the saga back: undoes its completed steps, last first."""
        self.saga = await self._sagas.compensate(self.id, reason)
        return self.saga

    async def get(self) -> saga_pb2.Saga:
        """Refreshes and returns the saga."""
        self.saga = await self._sagas.get(self.id)
        return self.saga

    async def wait(self, timeout: float | None = None) -> saga_pb2.Saga:
        """Waits until the saga comes to rest (nothing left running) and returns it."""
        async for saga in self._sagas.watch(self.id, timeout=timeout):
            self.saga = saga
        return self.saga

    async def delete(self) -> None:
        """Deletes the saga, stopping it without further compensation."""
        await self._sagas.delete(self.id)


class Sagas:
    """`client.sagas`: ordered steps over agents, undone in reverse when one fails."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = saga_grpc.SagaServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> SagaHandle:
        """Creates a saga from the seed's object (`name`, `steps` with `name`, `action`,
        `compensate`, the actions given by name), as a mapping or keyword arguments."""
        request = json_format.ParseDict({**(spec or {}), **fields}, saga_pb.CreateSagaRequest())
        response = await self._stub.CreateSaga(request, timeout=self._timeout)
        return SagaHandle(self, response.saga)

    def handle(self, saga: saga_pb2.Saga) -> SagaHandle:
        """A handle on a saga found with `get` or `list`."""
        return SagaHandle(self, saga)

    @translated
    async def execute(
        self,
        saga_id: str,
        input: Mapping[str, Any] | None = None,
        *,
        manual_compensation: bool = False,
    ) -> saga_pb2.Saga:
        request = saga_pb.ExecuteSagaRequest(id=saga_id, manual_compensation=manual_compensation)
        if input is not None:
            request.input.update(dict(input))
        response = await self._stub.ExecuteSaga(request, timeout=self._timeout)
        return response.saga

    @translated
    async def compensate(self, saga_id: str, reason: str = "") -> saga_pb2.Saga:
        response = await self._stub.CompensateSaga(
            saga_pb.CompensateSagaRequest(id=saga_id, reason=reason), timeout=self._timeout
        )
        return response.saga

    @translated
    async def get(self, saga_id: str) -> saga_pb2.Saga:
        response = await self._stub.GetSaga(
            saga_pb.GetSagaRequest(id=saga_id), timeout=self._timeout
        )
        return response.saga

    @translated
    async def list(
        self, page_size: int = 100, page_token: str = "", state: int = 0
    ) -> tuple[list[saga_pb2.Saga], str]:
        """A page of sagas, newest first, and the next page's token."""
        response = await self._stub.ListSagas(
            saga_pb.ListSagasRequest(page_size=page_size, page_token=page_token, state=state),  # type: ignore[arg-type]
            timeout=self._timeout,
        )
        return list(response.sagas), response.next_page_token

    @translated
    async def delete(self, saga_id: str) -> None:
        await self._stub.DeleteSaga(saga_pb.DeleteSagaRequest(id=saga_id), timeout=self._timeout)

    def watch(self, saga_id: str, timeout: float | None = None) -> AsyncIterator[saga_pb2.Saga]:
        """The saga now and after every change, until it comes to rest."""
        call = self._stub.WatchSaga(saga_pb.WatchSagaRequest(id=saga_id), timeout=timeout)
        return streamed(call, "saga")


class Queues:
    """`client.queues`: bounded queues with backpressure (the seed's section 8)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = queue_grpc.QueueServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> queue_pb2.Queue:
        """Creates a queue from the seed's object (`name`, `backpressure` with
        `strategy`, `maxSize`, `highWatermark`, `lowWatermark`), as a mapping or keywords."""
        request = json_format.ParseDict({**(spec or {}), **fields}, queue_pb.CreateQueueRequest())
        response = await self._stub.CreateQueue(request, timeout=self._timeout)
        return response.queue

    @translated
    async def enqueue(
        self, queue_id: str, *, call_timeout: float | None = None, **fields: Any
    ) -> queue_pb.EnqueueResponse:
        """Enqueues one task (keyword arguments of `task_request`); returns the durable
        task with the queue's pressure and depth. A refusal raises RPCError
        RESOURCE_EXHAUSTED with `retry_after`; on a "block" queue the call waits for
        room up to `call_timeout` (default: the client's timeout), then
        DEADLINE_EXCEEDED."""
        request = queue_pb.EnqueueRequest(queue_id=queue_id)
        copy_common_fields(task_request(**fields), request)
        response: queue_pb.EnqueueResponse = await self._stub.Enqueue(
            request, timeout=call_timeout if call_timeout is not None else self._timeout
        )
        return response

    @translated
    async def get(self, queue_id: str) -> queue_pb2.Queue:
        """The queue with its depth, pressure and counters."""
        response = await self._stub.GetQueue(
            queue_pb.GetQueueRequest(id=queue_id), timeout=self._timeout
        )
        return response.queue

    @translated
    async def list(self) -> list[queue_pb2.Queue]:
        """Every queue, oldest first."""
        return await _every_page(
            lambda token: self._stub.ListQueues(
                queue_pb.ListQueuesRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "queues",
        )

    @translated
    async def delete(self, queue_id: str) -> None:
        """Deletes a queue; its waiting tasks are cancelled."""
        await self._stub.DeleteQueue(
            queue_pb.DeleteQueueRequest(id=queue_id), timeout=self._timeout
        )


class Bulkheads:
    """`client.bulkheads`: isolated partitions of agents (the seed's section 9)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = bulkhead_grpc.BulkheadServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(
        self, spec: Mapping[str, Any] | None = None, **fields: Any
    ) -> bulkhead_pb2.Bulkhead:
        """Creates a bulkhead from the seed's object (`name`, `partitions` of `name`,
        `maxAgents`, `maxTasks`), as a mapping or keywords."""
        request = json_format.ParseDict(
            {**(spec or {}), **fields}, bulkhead_pb.CreateBulkheadRequest()
        )
        response = await self._stub.CreateBulkhead(request, timeout=self._timeout)
        return response.bulkhead

    @translated
    async def submit(self, bulkhead_id: str, partition: str, **fields: Any) -> task_pb2.Task:
        """Submits one task (keyword arguments of `task_request`) to one partition;
        returns it once durable. A full partition raises RPCError RESOURCE_EXHAUSTED
        naming the partition, with `retry_after`."""
        request = bulkhead_pb.SubmitToPartitionRequest(bulkhead_id=bulkhead_id, partition=partition)
        copy_common_fields(task_request(**fields), request)
        response = await self._stub.SubmitToPartition(request, timeout=self._timeout)
        return response.task

    @translated
    async def get(self, bulkhead_id: str) -> bulkhead_pb2.Bulkhead:
        """The bulkhead with each partition's agents and task counters."""
        response = await self._stub.GetBulkhead(
            bulkhead_pb.GetBulkheadRequest(id=bulkhead_id), timeout=self._timeout
        )
        return response.bulkhead

    @translated
    async def list(self) -> list[bulkhead_pb2.Bulkhead]:
        """Every bulkhead, oldest first."""
        return await _every_page(
            lambda token: self._stub.ListBulkheads(
                bulkhead_pb.ListBulkheadsRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "bulkheads",
        )

    @translated
    async def delete(self, bulkhead_id: str) -> None:
        """Deletes a bulkhead; its waiting tasks are cancelled, its agents released."""
        await self._stub.DeleteBulkhead(
            bulkhead_pb.DeleteBulkheadRequest(id=bulkhead_id), timeout=self._timeout
        )


class SwarmHandle:
    """A created swarm, as `client.swarms.create` returns it (the seed's `swarm`)."""

    def __init__(self, swarms: Swarms, swarm: swarm_pb2.Swarm) -> None:
        self._swarms = swarms
        self.swarm = swarm

    @property
    def id(self) -> str:
        return self.swarm.id

    async def submit(self, task: Mapping[str, Any] | None = None, **fields: Any) -> task_pb2.Task:
        """Queues one task on the swarm: the seed's object (`{title, priority}`, in
        JSON names) or keyword arguments of `task_request`."""
        return await self._swarms.submit(self.id, task, **fields)

    async def get(self) -> swarm_pb2.Swarm:
        """The swarm now: size, desired size, queue depth and recent decisions."""
        self.swarm = await self._swarms.get(self.id)
        return self.swarm

    async def delete(self) -> None:
        """Deletes the swarm: waiting tasks cancelled, agents drained and stopped."""
        await self._swarms.delete(self.id)


class Swarms:
    """`client.swarms`: elastic pools of agents (the seed's section 3)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = swarm_grpc.SwarmServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> SwarmHandle:
        """Creates a swarm from the seed's object (`name`, `minAgents`, `maxAgents`,
        `scalePolicy`, optional `agentTemplate`), as a mapping or keywords."""
        request = json_format.ParseDict({**(spec or {}), **fields}, swarm_pb.CreateSwarmRequest())
        response = await self._stub.CreateSwarm(request, timeout=self._timeout)
        return SwarmHandle(self, response.swarm)

    @translated
    async def submit(
        self, swarm_id: str, task: Mapping[str, Any] | None = None, **fields: Any
    ) -> task_pb2.Task:
        """Queues one task on a swarm; returns it once durable."""
        request = json_format.ParseDict(dict(task or {}), swarm_pb.SubmitSwarmTaskRequest())
        if fields:
            copy_common_fields(task_request(**fields), request)
        request.swarm_id = swarm_id
        response = await self._stub.SubmitSwarmTask(request, timeout=self._timeout)
        return response.task

    @translated
    async def get(self, swarm_id: str) -> swarm_pb2.Swarm:
        response = await self._stub.GetSwarm(
            swarm_pb.GetSwarmRequest(id=swarm_id), timeout=self._timeout
        )
        return response.swarm

    @translated
    async def list(self) -> list[swarm_pb2.Swarm]:
        """Every swarm, oldest first."""
        return await _every_page(
            lambda token: self._stub.ListSwarms(
                swarm_pb.ListSwarmsRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "swarms",
        )

    @translated
    async def delete(self, swarm_id: str) -> None:
        await self._stub.DeleteSwarm(
            swarm_pb.DeleteSwarmRequest(id=swarm_id), timeout=self._timeout
        )


class Client:
    """Connects to a coordinator; use as `async with Client(address) as client`."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Opens a channel (lazily connected) to the coordinator.

        Args:
            address: ``host:port``.
            timeout: seconds each unary call may take.
            token: bearer token (`godel token create`) sent with every call.
            tls_ca: PEM CA file that signed the coordinator's certificate; any TLS
                argument makes the channel use TLS.
            tls_cert: PEM client certificate for a coordinator that requires mTLS.
            tls_key: PEM key of `tls_cert`.
            credentials: ready-made TLS credentials, instead of the files.
        """
        self.address = address
        self._channel = open_channel(
            address,
            token=token,
            credentials=credentials,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self.tasks = Tasks(self._channel, timeout)
        self.agents = Agents(self._channel, timeout)
        self.events = Events(self._channel, timeout)
        self.convoys = Convoys(self._channel, timeout)
        self.sagas = Sagas(self._channel, timeout)
        self.queues = Queues(self._channel, timeout)
        self.bulkheads = Bulkheads(self._channel, timeout)
        self.workflows = Workflows(self._channel, timeout)
        self.swarms = Swarms(self._channel, timeout)

    async def close(self) -> None:
        """Closes the channel. Idempotent."""
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A protobuf Struct from a JSON-like mapping."""
    message = struct_pb2.Struct()
    message.update(dict(values))
    return message
