"""Circuit breakers end to end: a real agent process that fails on command opens its
breaker; nothing reaches it while open; then exactly the trial tasks go through."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb
from godel_grpc._proto.godel.v1 import agent_pb2, agent_service_pb2, task_pb2
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.config import ServeConfig
from godel_grpc.core.breaker_commands import BreakerCommands
from godel_grpc.server import RunningServer, start_server
from tests.integration.test_agent_link import RawAgent
from tests.support import agent_processes

pytestmark = pytest.mark.integration

Breaker = agent_service_pb2.GetCircuitStateResponse
Task = task_pb2.Task
BREAKER = json.dumps({"failureThreshold": 5, "timeout": 1, "halfOpenRequests": 3})


async def the_agent(client: Client) -> str:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        ready = [a for a in await client.agents.list(role="flaky") if a.state == a.STATE_READY]
        if ready:
            return ready[0].id
        assert asyncio.get_running_loop().time() < deadline, "agent did not connect"
        await asyncio.sleep(0.05)


async def test_breaker_opens_holds_back_then_lets_exactly_the_trials_through(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(
        address, "flaky", 1, "--capacity", "10", "--handler", "tests.agents.handlers:fail_when",
        "--circuit-breaker", BREAKER,
    ):  # fmt: skip
        agent_id = await the_agent(client)
        closed = await client.agents.get_circuit_state(agent_id)
        assert closed.state == Breaker.STATE_CLOSED and closed.config.failure_threshold == 5
        # Given five failures in a row
        for _ in range(5):
            await client.tasks.run(role="flaky", payload={"fail": True}, max_attempts=1)
        opened = await client.agents.get_circuit_state(agent_id)
        assert opened.state == Breaker.STATE_OPEN and opened.open_count == 1
        assert server.registry.get_sample_value("godel_circuit_state", {"agent": "flaky-0"}) == 1
        # When five good tasks arrive while it is open
        tasks = await client.tasks.submit_many([task_request(role="flaky") for _ in range(5)])
        held = [await client.tasks.get(t.id) for t in tasks]
        assert all(t.state == Task.STATE_QUEUED for t in held)
        # Then they all succeed after the timeout, and the log shows the trials first:
        # exactly three leased, and the other two only after those three succeeded
        done = await asyncio.gather(*(client.tasks.wait(t.id, timeout=20) for t in tasks))
        assert all(t.state == Task.STATE_SUCCEEDED for t in done)
        ids = {t.id for t in tasks}
        # WatchTask shows a task's end as soon as it happens; the log has it once durable
        await server.coordinator.journal.flush()
        order = [
            (e.type, e.task_leased.task_id or e.task_succeeded.task_id)
            for e in await client.events.get_for_agent(agent_id)
            if e.type in ("task.leased", "task.succeeded")
        ]
        ours = [kind for kind, task_id in order if task_id in ids]
        # While half-open, at most three trials were out; the fourth lease came only
        # after the third trial succeeded (which closed the breaker)
        leased = succeeded = 0
        for kind in ours:
            if kind == "task.leased":
                leased += 1
                assert leased <= 3 or succeeded >= 3, ours
            else:
                succeeded += 1
        assert leased == 5 and succeeded == 5
        first_lease = min(t.start_time.ToNanoseconds() for t in done) / 1e9
        assert first_lease >= opened.next_probe_time.ToNanoseconds() / 1e9 - 0.05
        closed_again = await client.agents.get_circuit_state(agent_id)
        assert closed_again.state == Breaker.STATE_CLOSED
        # And each change of state is in the agent's event log, with its reason
        await server.coordinator.journal.flush()
        changes = [
            (e.agent_circuit_changed.to_state, e.agent_circuit_changed.reason)
            for e in await client.events.get_for_agent(agent_id)
            if e.type == "agent.circuit_changed"
        ]
        assert changes == [
            ("OPEN", "consecutive-failures"),
            ("HALF_OPEN", "timeout-elapsed"),
            ("CLOSED", "trials-succeeded"),
        ]


async def test_a_failed_trial_reopens_the_breaker(server: RunningServer, client: Client) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(
        address, "flaky", 1, "--handler", "tests.agents.handlers:fail_when",
        "--circuit-breaker", BREAKER,
    ):  # fmt: skip
        agent_id = await the_agent(client)
        for _ in range(5):
            await client.tasks.run(role="flaky", payload={"fail": True}, max_attempts=1)
        first = await client.agents.get_circuit_state(agent_id)
        # The first trial fails: open again, with a later probe time
        trial = await client.tasks.run(
            role="flaky", payload={"fail": True}, max_attempts=1, wait_timeout=20
        )
        assert trial.state == Task.STATE_FAILED
        again = await client.agents.get_circuit_state(agent_id)
        assert again.state == Breaker.STATE_OPEN and again.open_count == 2
        assert again.next_probe_time.ToNanoseconds() > first.next_probe_time.ToNanoseconds()


async def test_unknown_agent_has_no_breaker(client: Client) -> None:
    with pytest.raises(RPCError) as missing:
        await client.agents.get_circuit_state("ag-404")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def circuit_events(server: RunningServer, client: Client, agent_id: str) -> list[tuple]:  # type: ignore[type-arg]
    await server.coordinator.journal.flush()
    return [
        (e.agent_circuit_changed.to_state, e.agent_circuit_changed.reason,
         e.agent_circuit_changed.comment)
        for e in await client.events.get_for_agent(agent_id)
        if e.type == "agent.circuit_changed"
    ]  # fmt: skip


async def test_force_open_holds_every_task_back_until_reset(
    server: RunningServer, client: Client
) -> None:
    address = f"127.0.0.1:{server.port}"
    with agent_processes(address, "flaky", 1, "--handler", "tests.agents.handlers:fail_when"):
        agent_id = await the_agent(client)
        # Given an operator forces the healthy agent's breaker open
        forced = await client.agents.force_open_circuit(agent_id, reason="maintenance")
        assert forced.state == Breaker.STATE_OPEN and forced.forced
        assert not forced.HasField("next_probe_time")  # forced: no probing
        # When a task arrives, then the breaker holds it back and it stays queued
        task = await client.tasks.submit(role="flaky")
        deadline = asyncio.get_running_loop().time() + 10
        while (await client.agents.get_circuit_state(agent_id)).refused_count == 0:
            assert asyncio.get_running_loop().time() < deadline, "dispatch was never tried"
            await asyncio.sleep(0.02)
        assert (await client.tasks.get(task.id)).state == Task.STATE_QUEUED
        # And forcing again changes nothing
        again = await client.agents.force_open_circuit(agent_id)
        assert again.forced and again.open_count == 1
        # When reset, then the task runs at once
        reset = await client.agents.reset_circuit(agent_id, reason="maintenance over")
        assert reset.state == Breaker.STATE_CLOSED and not reset.forced
        assert (await client.tasks.wait(task.id, timeout=10)).state == Task.STATE_SUCCEEDED
        # And both changes are events with the operator's words, and metrics
        assert await circuit_events(server, client, agent_id) == [
            ("OPEN", "forced-open", "maintenance"),
            ("CLOSED", "reset", "maintenance over"),
        ]
        sample = server.registry.get_sample_value
        for to, reason in (("open", "forced-open"), ("closed", "reset")):
            labels = {"to": to, "reason": reason}
            assert sample("godel_circuit_transitions_total", labels) == 1
        # And an unknown agent is NOT_FOUND
        with pytest.raises(RPCError) as missing:
            await client.agents.reset_circuit("ag-404")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_failure_rate_over_a_window_opens_the_breaker(
    server: RunningServer, client: Client
) -> None:
    # Given a breaker that ignores runs of failures but trips at 50% over 4 results
    rate = json.dumps({"failureThreshold": 100, "failureRateThreshold": 0.5, "windowSize": 4})
    address = f"127.0.0.1:{server.port}"
    with agent_processes(
        address, "flaky", 1, "--handler", "tests.agents.handlers:fail_when",
        "--circuit-breaker", rate,
    ):  # fmt: skip
        agent_id = await the_agent(client)
        shown = await client.agents.get_circuit_state(agent_id)
        assert (shown.config.window_size, shown.config.minimum_calls) == (4, 4)
        # When success, failure, success: the window is too short to judge
        for fail in (False, True, False):
            await client.tasks.run(role="flaky", payload={"fail": fail}, max_attempts=1)
        window = await client.agents.get_circuit_state(agent_id)
        assert window.state == Breaker.STATE_CLOSED and window.window_calls == 3
        assert window.failure_rate == pytest.approx(1 / 3)
        # When a second failure makes it 2 of 4, then it opens on the rate
        await client.tasks.run(role="flaky", payload={"fail": True}, max_attempts=1)
        opened = await client.agents.get_circuit_state(agent_id)
        assert opened.state == Breaker.STATE_OPEN and opened.failure_count == 2
        assert (await circuit_events(server, client, agent_id))[-1][:2] == ("OPEN", "failure-rate")


async def test_an_agent_shown_connected_has_its_breaker_already(server: RunningServer) -> None:
    # Given an agent whose connection is applied but not yet durable (its hello is
    # being committed),
    coordinator = server.coordinator
    hello = link_pb.AgentHello(role="early", name="early-bird")
    opening = asyncio.create_task(coordinator.links.open_session(hello))
    await asyncio.sleep(0)  # its first step applies the connection, then awaits the commit
    (agent,) = [a for a in coordinator.state.agents.values() if a.name == "early-bird"]
    assert not opening.done() and agent.state == agent_pb2.Agent.STATE_READY
    # then GetCircuitState, asked now, already answers for it.
    shown = BreakerCommands(coordinator).state(agent.id)
    assert shown.state == Breaker.STATE_CLOSED
    session = await opening
    coordinator.links.close_session(session, "test over")


async def test_slow_successes_count_as_failures(server: RunningServer, client: Client) -> None:
    # Given tasks slower than 0.2 s count as failures, and two failures open it
    slow = json.dumps({"failureThreshold": 2, "slowCallSeconds": 0.2})
    address = f"127.0.0.1:{server.port}"
    with agent_processes(
        address, "flaky", 1, "--handler", "tests.agents.handlers:sleep", "--circuit-breaker", slow
    ):
        agent_id = await the_agent(client)
        # When one fast and two slow tasks succeed
        for seconds in (0.0, 0.4, 0.4):
            done = await client.tasks.run(role="flaky", payload={"seconds": seconds})
            assert done.state == Task.STATE_SUCCEEDED
        # Then the two slow ones opened the breaker
        state = await client.agents.get_circuit_state(agent_id)
        assert state.state == Breaker.STATE_OPEN
        assert (state.slow_call_count, state.failure_count, state.success_count) == (2, 2, 1)


async def test_contradictory_breaker_settings_are_refused_at_spawn(client: Client) -> None:
    with pytest.raises(RPCError) as refused:
        await client.agents.spawn(
            role="worker", circuitBreaker={"windowSize": 4, "minimumCalls": 5}
        )
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_forced_breaker_stays_forced_across_a_coordinator_restart(
    tmp_path: Path,
) -> None:
    config = ServeConfig(listen="127.0.0.1:0", metrics_listen="", data_dir=tmp_path)
    # Given an agent whose breaker an operator forced open
    running = await start_server(config, CollectorRegistry())
    try:
        async with Client(f"127.0.0.1:{running.port}") as client:
            agent = RawAgent(f"127.0.0.1:{running.port}")
            welcome = await agent.hello(role="worker", name="held")
            await client.agents.force_open_circuit(welcome.agent_id, reason="bad deploy")
            await agent.close()
    finally:
        await running.stop(grace=1.0)
    # When the coordinator restarts and the agent resumes its identity
    running = await start_server(config, CollectorRegistry())
    try:
        async with Client(f"127.0.0.1:{running.port}") as client:
            agent = RawAgent(f"127.0.0.1:{running.port}")
            again = await agent.hello(role="worker", resume_token=welcome.resume_token)
            assert again.agent_id == welcome.agent_id
            # Then its breaker is still forced open, until an operator resets it
            held = await client.agents.get_circuit_state(again.agent_id)
            assert held.state == Breaker.STATE_OPEN and held.forced
            task = await client.tasks.submit(role="worker")
            reset = await client.agents.reset_circuit(again.agent_id)
            assert reset.state == Breaker.STATE_CLOSED
            (assignment,) = await agent.next_assignments()
            assert assignment.task_id == task.id
            await agent.close()
    finally:
        await running.stop(grace=1.0)


async def test_a_trial_that_will_never_report_hands_its_slot_back(
    server: RunningServer, client: Client
) -> None:
    """A half-open breaker with one trial: when the trial task is cancelled (its result
    will never come), the next task still gets its trial instead of waiting for ever."""
    agent = RawAgent(f"127.0.0.1:{server.port}")
    try:
        breaker = {"enabled": True, "failureThreshold": 1, "timeout": 0.2, "halfOpenRequests": 1}
        await agent.hello(
            role="worker",
            name="trial",
            capacity=4,
            circuit_breaker=json_format.ParseDict(breaker, agent_pb2.CircuitBreakerConfig()),
        )
        agent_id = agent.welcome.agent_id  # type: ignore[union-attr]
        # Given a breaker opened by one failure
        await client.tasks.submit(role="worker", max_attempts=1)
        (first,) = await agent.next_assignments()
        failed = link_pb.TaskResult(task_id=first.task_id, attempt_id=first.attempt_id)
        failed.error.message = "boom"
        await agent.outgoing.put(link_pb.AgentMessage(results=[failed]))
        # And a trial task leased once it half-opened, then cancelled mid-run
        trial = await client.tasks.submit(role="worker")
        (leased,) = await agent.next_assignments()
        assert leased.task_id == trial.id
        assert (await client.agents.get_circuit_state(agent_id)).state == Breaker.STATE_HALF_OPEN
        await client.tasks.cancel(trial.id)
        # When the next task comes, it is the new trial
        after = await client.tasks.submit(role="worker")
        (next_trial,) = await agent.next_assignments()
        assert next_trial.task_id == after.id
    finally:
        await agent.close()
