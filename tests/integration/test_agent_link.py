"""The agent link's guarantees, driven over the real protocol by hand-written agents.

These agents are this test's own code speaking AgentLinkService.Connect directly, so the
test can do what a misbehaving agent would: vanish with a lease, come back late, send a
result twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb
from godel_grpc._proto.godel.v1 import agent_link_service_pb2_grpc as link_grpc
from godel_grpc._proto.godel.v1 import agent_pb2, task_pb2
from godel_grpc.client import Client, RPCError
from godel_grpc.server import RunningServer

pytestmark = pytest.mark.integration


class RawAgent:
    """One Connect stream, with the test deciding every message."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.outgoing: asyncio.Queue[link_pb.AgentMessage | None] = asyncio.Queue()
        self.call = link_grpc.AgentLinkServiceStub(self.channel).Connect(self._requests())
        self.welcome: link_pb.AgentWelcome | None = None
        self.first_message: link_pb.CoordinatorMessage | None = None

    async def _requests(self) -> AsyncIterator[link_pb.AgentMessage]:
        while (message := await self.outgoing.get()) is not None:
            yield message

    async def hello(self, **fields: object) -> link_pb.AgentWelcome:
        await self.outgoing.put(link_pb.AgentMessage(hello=link_pb.AgentHello(**fields)))  # type: ignore[arg-type]
        first = await self.call.read()
        assert first.HasField("welcome")
        self.welcome = first.welcome
        self.first_message = first
        return first.welcome

    async def next_assignments(self) -> list[link_pb.TaskAssignment]:
        while True:
            message = await asyncio.wait_for(self.call.read(), 10)
            if message.assignments:
                return list(message.assignments)

    async def succeed(self, assignment: link_pb.TaskAssignment, **output: object) -> None:
        result = link_pb.TaskResult(task_id=assignment.task_id, attempt_id=assignment.attempt_id)
        result.output.update(output)
        await self.outgoing.put(link_pb.AgentMessage(results=[result]))

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def stale_results(server: RunningServer) -> float:
    value = server.registry.get_sample_value("godel_task_results_total", {"outcome": "stale"})
    return value or 0.0


async def test_a_late_result_of_a_lost_attempt_is_dropped_and_counted(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    # Given agent A holds the lease of a task
    first = RawAgent(address)
    welcome = await first.hello(role="linker", name="a")
    task = await client.tasks.submit(role="linker")
    (lost,) = await first.next_assignments()
    # When A's link drops, the task goes to agent B
    await first.close()
    second = RawAgent(address)
    await second.hello(role="linker", name="b")
    (current,) = await second.next_assignments()
    assert current.task_id == task.id and current.attempt_id != lost.attempt_id
    # And A comes back (same identity) and sends its old result
    returning = RawAgent(address)
    resumed = await returning.hello(role="linker", name="a", resume_token=welcome.resume_token)
    assert resumed.resumed and resumed.agent_id == welcome.agent_id
    await returning.succeed(lost, by="a")
    # Then that result is dropped and counted, and B's result is the one recorded
    await second.succeed(current, by="b")
    await second.succeed(current, by="b-again")
    done = await client.tasks.wait(task.id, timeout=10)
    assert done.state == task_pb2.Task.STATE_SUCCEEDED
    assert done.output["by"] == "b"
    assert await stale_results(server) == 2.0
    for agent in (second, returning):
        await agent.close()


async def test_capacity_bounds_what_is_in_flight(server: RunningServer, client: Client) -> None:
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.hello(role="bounded", capacity=3)
    tasks = [await client.tasks.submit(role="bounded") for _ in range(10)]
    first = await agent.next_assignments()
    got = list(first)
    while len(got) < 3:
        got.extend(await agent.next_assignments())
    assert len(got) == 3
    # Finishing one frees exactly one slot
    await agent.succeed(got[0])
    (more,) = await agent.next_assignments()
    assert more.task_id not in {a.task_id for a in got}
    assert len({t.id for t in tasks}) == 10
    await agent.close()


async def test_an_assignment_carries_the_tasks_labels(
    server: RunningServer, client: Client
) -> None:
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.hello(role="labelled", capacity=2)
    plain = await client.tasks.submit(role="labelled")
    tagged = await client.tasks.submit(role="labelled", labels={"team": "infra", "tier": "1"})
    got: dict[str, link_pb.TaskAssignment] = {}
    while len(got) < 2:
        got.update((a.task_id, a) for a in await agent.next_assignments())
    assert dict(got[plain.id].labels) == {}
    assert dict(got[tagged.id].labels) == {"team": "infra", "tier": "1"}
    await agent.close()


async def test_link_messages_are_counted_by_the_tasks_they_carry(
    server: RunningServer, client: Client
) -> None:
    def carried(direction: str) -> float:
        labels = {"direction": direction}
        return server.registry.get_sample_value("godel_link_message_tasks_sum", labels) or 0.0

    before_out, before_in = carried("to_agent"), carried("from_agent")
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.hello(role="counted", capacity=3)
    tasks = [await client.tasks.submit(role="counted") for _ in range(3)]
    got: list[link_pb.TaskAssignment] = []
    while len(got) < 3:
        got.extend(await agent.next_assignments())
    result = link_pb.AgentMessage()
    for assignment in got:
        result.results.add(task_id=assignment.task_id, attempt_id=assignment.attempt_id)
    await agent.outgoing.put(result)
    for task in tasks:
        await client.tasks.wait(task.id, timeout=10)
    assert carried("to_agent") - before_out == 3
    assert carried("from_agent") - before_in == 3
    await agent.close()


async def test_an_agent_drained_before_it_connects_is_drained_when_it_does(
    server: RunningServer, client: Client
) -> None:
    # Given a spawned agent's identity, drained while its process is still starting
    server.coordinator.spawned_ids["late-starter"] = "ag-late"
    server.coordinator.links.drain_agent("ag-late")
    # When it connects, it is asked to drain at once and gets no work
    agent = RawAgent(f"127.0.0.1:{server.port}")
    welcome = await agent.hello(role="late", name="late-starter", capacity=2)
    assert welcome.agent_id == "ag-late"
    first = agent.first_message
    assert first is not None and first.drain
    task = await client.tasks.submit(role="late")
    shown = await client.agents.get("ag-late")
    assert shown.state == agent_pb2.Agent.STATE_DRAINING
    assert (await client.tasks.get(task.id)).state == task_pb2.Task.STATE_QUEUED
    await agent.close()


async def test_a_drain_kept_for_an_agent_whose_process_is_gone_is_dropped(
    server: RunningServer,
) -> None:
    # Given a spawned identity drained before it connected, whose process then went
    # away (a swarm records its member stopped),
    server.coordinator.spawned_ids["gone-starter"] = "ag-gone"
    server.coordinator.links.drain_agent("ag-gone")
    server.coordinator.links.forget_drain("ag-gone")
    # when a link with that identity connects after all, the drain is not waiting for it.
    agent = RawAgent(f"127.0.0.1:{server.port}")
    welcome = await agent.hello(role="gone", name="gone-starter")
    assert welcome.agent_id == "ag-gone"
    first = agent.first_message
    assert first is not None and not first.drain
    await agent.close()


async def test_a_second_link_with_a_taken_name_is_refused(server: RunningServer) -> None:
    address = f"127.0.0.1:{server.port}"
    first = RawAgent(address)
    await first.hello(role="named", name="unique")
    second = RawAgent(address)
    await second.outgoing.put(
        link_pb.AgentMessage(hello=link_pb.AgentHello(role="named", name="unique"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.call.read()
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for agent in (first, second):
        await agent.close()


async def test_a_name_is_free_again_once_its_link_has_ended(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    first = RawAgent(address)
    before = await first.hello(role="named", name="reused")
    await first.close()
    async with asyncio.timeout(10):  # its link ends on the coordinator's side too
        async for agent in client.agents.watch(agent_ids=[before.agent_id]):
            if agent.state == agent_pb2.Agent.STATE_DISCONNECTED:
                break
    # A new process (no resume token) may take the name: it is a new agent
    second = RawAgent(address)
    after = await second.hello(role="named", name="reused")
    assert after.agent_id != before.agent_id and after.name == "reused"
    await second.close()


async def test_a_link_must_start_with_a_valid_hello(server: RunningServer) -> None:
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.outgoing.put(link_pb.AgentMessage(draining=True))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agent.call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await agent.close()


async def test_a_malformed_message_ends_the_link_with_its_violations(
    server: RunningServer, client: Client
) -> None:
    agent = RawAgent(f"127.0.0.1:{server.port}")
    welcome = await agent.hello(role="strict", name="strict")
    # A second hello in mid-link is checked like the first: its role is required
    await agent.outgoing.put(link_pb.AgentMessage(hello=link_pb.AgentHello(role="")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(agent.next_assignments(), 10)
    error = RPCError.from_aio(refused.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["hello.role"]
    # And the coordinator no longer counts the agent as connected
    (known,) = await client.agents.list(role="strict")
    assert known.id == welcome.agent_id
    assert known.state == agent_pb2.Agent.STATE_DISCONNECTED
    await agent.close()


async def test_a_hello_that_breaks_its_rules_is_refused_with_the_field_named(
    server: RunningServer,
) -> None:
    agent = RawAgent(f"127.0.0.1:{server.port}")
    await agent.outgoing.put(link_pb.AgentMessage(hello=link_pb.AgentHello(name="x" * 129)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agent.call.read()
    error = RPCError.from_aio(refused.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in error.field_violations) == ["hello.name", "hello.role"]
    await agent.close()
