"""Watch* RPCs are subscription queries: the first message is the resource as Get shows
it at that moment, then one message per change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.client import Client
from godel_grpc.server import RunningServer
from tests.support import agent_processes, wait_for_agents

pytestmark = pytest.mark.integration

Agent = agent_pb2.Agent
T = TypeVar("T")


async def first(stream: AsyncIterator[T]) -> T:
    """The stream's first message (and the stream is closed)."""
    async for message in stream:
        await stream.aclose()  # type: ignore[attr-defined]
        return message
    raise AssertionError("the stream ended without a message")


async def test_every_watch_starts_with_the_current_state(client: Client) -> None:
    task = await client.tasks.submit(role="nobody")
    assert await first(client.tasks.watch(task.id, timeout=10)) == await client.tasks.get(task.id)
    convoy = await client.convoys.create({"name": "c", "agents": [{"role": "idle", "task": "t"}]})
    watched = await first(client.convoys.watch(convoy.id, timeout=10))
    assert watched == await client.convoys.get(convoy.id)
    saga = await client.sagas.create(
        {"name": "s", "steps": [{"name": "a", "action": "doA", "compensate": "undoA"}]}
    )
    assert await first(client.sagas.watch(saga.id, timeout=10)) == await client.sagas.get(saga.id)


async def test_watch_agents_sends_the_fleet_then_each_change(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    args = ("--handler", "tests.agents.handlers:noop")
    with agent_processes(address, "early", 1, *args) as early:
        await wait_for_agents(client, 1, role="early")
        before = await client.agents.list()
        received: list[Agent] = []

        async def watch() -> None:
            async for agent in client.agents.watch():
                received.append(agent)

        watcher = asyncio.create_task(watch())
        # Then the first messages are the agents as they are
        await wait_until(lambda: len(received) >= 1)
        assert [_without_liveness(a) for a in received] == [_without_liveness(a) for a in before]
        # When another agent connects and the first runs a task and leaves
        with agent_processes(address, "late", 1, *args):
            await wait_for_agents(client, 1, role="late")
            await client.tasks.run(role="early", wait_timeout=20)
            early[0].stop()
            await wait_until(
                lambda: any(
                    a.role == "early" and a.state == Agent.STATE_DISCONNECTED for a in received
                )
            )
        watcher.cancel()
    # Then each change came as a message: the newcomer, the task's lease and result
    late = [a for a in received[1:] if a.role == "late"]
    assert [a.state for a in late][:2] == [Agent.STATE_DISCONNECTED, Agent.STATE_READY]
    early_updates = [a for a in received[1:] if a.role == "early"]
    assert [(a.in_flight, a.tasks_completed) for a in early_updates[:2]] == [(1, 0), (0, 1)]
    assert early_updates[-1].state == Agent.STATE_DISCONNECTED
    # And a filter by role keeps only that role's agents
    only = await first(client.agents.watch(role="late"))
    assert only.role == "late"


def _without_liveness(agent: Agent) -> Agent:
    copy = Agent()
    copy.CopyFrom(agent)
    copy.ClearField("last_seen_time")
    return copy


async def wait_until(condition: Any, timeout: float = 30.0) -> None:
    """Waits for `condition()` to hold, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
