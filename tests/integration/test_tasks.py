"""Tasks end to end: a real coordinator on loopback, real `godel agent` processes."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import grpc
import pytest

from godel_grpc._proto.godel.v1 import event_pb2, task_pb2
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.server import RunningServer
from tests.support import (
    AgentProcess,
    CoordinatorProcess,
    agent_processes,
    until,
    wait_for_agents,
)

pytestmark = pytest.mark.integration

Task = task_pb2.Task
HANDLERS = "tests.agents.handlers"


def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


async def test_a_submitted_task_runs_on_a_real_agent(server: RunningServer, client: Client) -> None:
    with agent_processes(address(server), "worker", 1, "--handler", f"{HANDLERS}:echo"):
        await wait_for_agents(client, 1)
        task = await client.tasks.submit(role="worker", title="say hi", payload={"greeting": "hi"})
        assert task.id.startswith("t-") and task.HasField("create_time")
        done = await client.tasks.wait(task.id, timeout=20)
    assert done.state == Task.STATE_SUCCEEDED
    assert dict(done.output["echo"]) == {"greeting": "hi"}
    assert done.agent_id and done.attempts == 1


async def test_an_exec_agent_runs_a_command_line(server: RunningServer, client: Client) -> None:
    script = (
        "import json,sys; t=json.load(sys.stdin); print(json.dumps({'n': t['payload']['n'] * 2}))"
    )
    command = f'{sys.executable} -c "{script}"'
    with agent_processes(address(server), "doubler", 1, "--exec", command):
        await wait_for_agents(client, 1)
        task = await client.tasks.submit(role="doubler", payload={"n": 21})
        done = await client.tasks.wait(task.id, timeout=20)
    assert done.state == Task.STATE_SUCCEEDED
    assert done.output["n"] == 42


async def test_never_more_in_flight_than_capacity(server: RunningServer, client: Client) -> None:
    # Given two agents of capacity 2 and 12 tasks that each take a while
    with agent_processes(
        address(server), "slow", 2, "--capacity", "2", "--handler", f"{HANDLERS}:sleep"
    ):
        await wait_for_agents(client, 2)
        tasks = await client.tasks.submit_many(
            [task_request(role="slow", payload={"seconds": 0.15}) for _ in range(12)]
        )
        done = await asyncio.gather(*(client.tasks.wait(t.id, timeout=30) for t in tasks))
        assert all(t.state == Task.STATE_SUCCEEDED for t in done)
        agents = {a.id for a in await client.agents.list(role="slow")}
        # Then the durable log shows at most 2 attempts open per agent at any moment
        peak: Counter[str] = Counter()
        for agent_id in agents:
            open_now = 0
            for event in await client.events.get_for_agent(agent_id):
                if event.type == "task.leased":
                    open_now += 1
                elif event.type in ("task.succeeded", "task.attempt_failed", "task.requeued"):
                    open_now -= 1
                peak[agent_id] = max(peak[agent_id], open_now)
    assert max(peak.values()) <= 2
    assert sum(1 for t in done if t.agent_id) == 12


async def test_failures_are_retried_then_the_task_fails(
    server: RunningServer, client: Client
) -> None:
    with agent_processes(address(server), "flaky", 1, "--handler", f"{HANDLERS}:fail_when"):
        await wait_for_agents(client, 1)
        task = await client.tasks.submit(
            role="flaky", payload={"fail": True, "retryable": True, "code": "BOOM"}, max_attempts=2
        )
        fatal = await client.tasks.submit(role="flaky", payload={"fail": True, "retryable": False})
        done = await client.tasks.wait(task.id, timeout=20)
        done_fatal = await client.tasks.wait(fatal.id, timeout=20)
    # A retryable failure is tried max_attempts times, then the task fails
    assert done.state == Task.STATE_FAILED
    assert done.attempts == 2 and done.failed_attempts == 2
    assert done.error.code == "BOOM"
    # A non-retryable failure ends the task at once
    assert done_fatal.state == Task.STATE_FAILED
    assert done_fatal.attempts == 1


async def test_cancel_a_running_task(server: RunningServer, client: Client) -> None:
    with agent_processes(address(server), "slow", 1, "--handler", f"{HANDLERS}:sleep"):
        await wait_for_agents(client, 1)
        task = await client.tasks.submit(role="slow", payload={"seconds": 30})
        async for update in client.tasks.watch(task.id, timeout=20):
            if update.state == Task.STATE_RUNNING:
                break
        cancelled = await client.tasks.cancel(task.id, reason="changed my mind")
        assert cancelled.state == Task.STATE_CANCELLED
        assert cancelled.error.message == "changed my mind"
        # And the agent's slot is free again: a new task runs at once
        quick = await client.tasks.submit(role="slow", payload={"seconds": 0})
        assert (await client.tasks.wait(quick.id, timeout=20)).state == Task.STATE_SUCCEEDED
    with pytest.raises(RPCError) as again:
        await client.tasks.cancel(task.id)
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_lost_agents_task_completes_on_another(
    server: RunningServer, client: Client
) -> None:
    # Given one agent running a long task
    first = AgentProcess(
        address(server), "worker", "--name", "doomed", "--handler", f"{HANDLERS}:sleep"
    )
    try:
        await wait_for_agents(client, 1)
        task = await client.tasks.submit(role="worker", payload={"seconds": 1.0})
        async for update in client.tasks.watch(task.id, timeout=20):
            if update.state == Task.STATE_RUNNING:
                break
        lost_attempt = update.attempt_id
        # When that agent is killed and another one joins
        first.proc.kill()
        first.proc.wait(10)
        with agent_processes(address(server), "worker", 1, "--handler", f"{HANDLERS}:sleep"):
            done = await client.tasks.wait(task.id, timeout=30)
    finally:
        first.stop()
    # Then the task completed on the new agent, under a new attempt
    assert done.state == Task.STATE_SUCCEEDED
    assert done.attempt_id != lost_attempt
    assert done.attempts == 2 and done.failed_attempts == 1


async def test_idempotency_key_returns_the_first_task(
    server: RunningServer, client: Client
) -> None:
    first = await client.tasks.submit(role="nobody", idempotency_key="order-17")
    second = await client.tasks.submit(role="nobody", idempotency_key="order-17", title="other")
    assert second.id == first.id


async def test_watch_streams_each_state(server: RunningServer, client: Client) -> None:
    # Given a task queued before any agent can run it, and a watcher
    task = await client.tasks.submit(role="watched", payload={"seconds": 0.3})
    updates = client.tasks.watch(task.id, timeout=20)
    first = await anext(updates)
    # When an agent arrives and runs it
    with agent_processes(address(server), "watched", 1, "--handler", f"{HANDLERS}:sleep"):
        states = [first.state] + [t.state async for t in updates]
    # Then the watcher saw it queued, running (with progress) and succeeded, in that order
    assert states[0] == Task.STATE_QUEUED
    assert Task.STATE_RUNNING in states
    assert states[-1] == Task.STATE_SUCCEEDED


async def test_bad_input_gets_a_clear_status_and_changes_nothing(
    server: RunningServer, client: Client
) -> None:
    before, _ = await client.tasks.list()
    with pytest.raises(RPCError) as missing:
        await client.tasks.submit(title="no target")
    assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.value.field_violations == [
        ("target", "exactly one of role or action is required")
    ]
    with pytest.raises(RPCError) as oversize:
        await client.tasks.submit(role="w", payload={"blob": "x" * (1024 * 1024 + 10)})
    assert oversize.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert oversize.value.field_violations[0][0] == "payload"
    with pytest.raises(RPCError) as batch:
        await client.tasks.submit_many(
            [task_request(role="w"), task_pb.SubmitTaskRequest(role="w", priority="urgent")]
        )
    assert batch.value.field_violations[0][0] == "requests[1].priority"
    with pytest.raises(RPCError) as unknown:
        await client.tasks.get("t-404")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    after, _ = await client.tasks.list()
    assert len(after) == len(before)


async def test_a_task_stream_answers_each_task_in_order_once_it_is_durable(
    server: RunningServer, client: Client
) -> None:
    # Given one stream of tasks, one per message: a malformed one, one with an unknown
    # priority and a repeated idempotency key among them,
    requests = [
        task_request(role="streamed", title="first", idempotency_key="stream-1"),
        task_pb.SubmitTaskRequest(title="no target"),
        task_request(role="streamed", priority="urgent"),
        task_request(role="streamed", title="again", idempotency_key="stream-1"),
        *(task_request(role="streamed", payload={"n": n}) for n in range(200)),
    ]
    acks: list[task_pb.SubmitTaskStreamAck] = []
    async for ack in client.tasks.submit_stream(requests, timeout=60):
        acks.append(ack)
        if len(acks) == 1:  # then the first is in the log as soon as it is answered,
            stream = f"task/{ack.task.id}"
            logged = await server.coordinator.store.read(0, 10, stream=stream)
            assert [event.type for event in logged] == ["task.submitted"]
    # every task is answered once, in order; the malformed ones say why and the
    # stream goes on; the repeat names the first task,
    assert [ack.sequence for ack in acks] == list(range(1, len(requests) + 1))
    refused = acks[1:3]
    assert [ack.error_code for ack in refused] == ["INVALID_ARGUMENT"] * 2
    assert not any(ack.HasField("task") for ack in refused)
    assert [p.field for p in acks[2].field_problems] == ["task.priority"]
    assert acks[3].task.id == acks[0].task.id
    accepted = {ack.task.id for ack in acks if ack.HasField("task")}
    assert len(accepted) == 201
    # every accepted task is in the log,
    submitted = {
        event.stream.removeprefix("task/")
        for event in await server.coordinator.store.read(0, 100_000)
        if event.type == "task.submitted"
    }
    assert accepted <= submitted
    # and real agents run them all.
    with agent_processes(address(server), "streamed", 2, "--handler", f"{HANDLERS}:echo"):
        ended = await asyncio.gather(*(client.tasks.wait(t, timeout=60) for t in accepted))
    assert {task.state for task in ended} == {Task.STATE_SUCCEEDED}


async def test_a_task_stream_answers_a_burst_in_fewer_messages(server: RunningServer) -> None:
    # Given a burst of 300 tasks sent on one stream as fast as the client can,
    requests = [
        task_pb.SubmitTaskStreamRequest(sequence=n, task=task_request(role="burst"))
        for n in range(1, 301)
    ]
    async with grpc.aio.insecure_channel(address(server)) as channel:
        stub = task_grpc.TaskServiceStub(channel)
        replies = [reply async for reply in stub.SubmitTaskStream(iter(requests), timeout=60)]
    # then all are answered, in order, and answers that were ready together shared a
    # message (each commit releases the tasks read while it was under way).
    assert [ack.sequence for reply in replies for ack in reply.acks] == list(range(1, 301))
    assert len(replies) < 300


async def test_run_task_answers_with_the_ended_task(server: RunningServer, client: Client) -> None:
    with agent_processes(address(server), "runner", 1, "--handler", f"{HANDLERS}:echo"):
        await wait_for_agents(client, 1)
        done = await client.tasks.run(role="runner", payload={"x": 1}, wait_timeout=20)
        assert done.state == Task.STATE_SUCCEEDED
        assert done.output["echo"]["x"] == 1
        # The task's whole story is durable: it is in the log when the reply arrives
        # (its submission is committed with its result, not before).
        events = await server.coordinator.store.read(0, 1000, stream=f"task/{done.id}")
        assert [e.type for e in events] == ["task.submitted", "task.leased", "task.succeeded"]
    with pytest.raises(RPCError) as waited:
        await client.tasks.run(role="nobody-runs-this", idempotency_key="late", wait_timeout=0.3)
    assert waited.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # A task whose run gave up waiting carries on, and was committed by itself; the
    # answer named it.
    waiting = await client.tasks.submit(role="nobody-runs-this", idempotency_key="late")
    assert waiting.state == Task.STATE_QUEUED
    assert waiting.id in waited.value.message
    events = await server.coordinator.store.read(0, 1000, stream=f"task/{waiting.id}")
    assert [e.type for e in events] == ["task.submitted"]


async def test_a_run_stream_answers_each_task_when_it_ends(
    server: RunningServer, client: Client
) -> None:
    # Given one stream carrying a slow task, a quick one and a malformed one, in that order
    requests = [
        task_pb.RunTaskStreamRequest(
            sequence=1, task=task_request(role="sleeper", payload={"seconds": 1.0})
        ),
        task_pb.RunTaskStreamRequest(
            sequence=2, task=task_request(role="sleeper", payload={"seconds": 0.0})
        ),
        task_pb.RunTaskStreamRequest(sequence=3, task=task_pb.SubmitTaskRequest()),  # no target
    ]
    with agent_processes(
        address(server), "sleeper", 1, "--capacity", "2", "--handler", f"{HANDLERS}:sleep"
    ):
        await wait_for_agents(client, 1)
        async with grpc.aio.insecure_channel(address(server)) as channel:
            stub = task_grpc.TaskServiceStub(channel)
            answers = []
            async for reply in stub.RunTaskStream(iter(requests), timeout=30):
                for answer in reply.answers:
                    answers.append(answer)
                    if answer.HasField("task"):  # its end is durable when it is answered
                        events = await server.coordinator.store.read(
                            0, 1000, stream=f"task/{answer.task.id}"
                        )
                        assert events[-1].type == "task.succeeded"
    # then the malformed one is refused at once, the stream goes on, and the tasks are
    # answered as they end: the quick one before the slow one sent ahead of it.
    assert [a.sequence for a in answers] == [3, 2, 1]
    refused = answers[0]
    assert refused.error_code == "INVALID_ARGUMENT" and not refused.HasField("task")
    assert [p.field for p in refused.field_problems] == ["task.target"]
    assert [a.task.state for a in answers[1:]] == [Task.STATE_SUCCEEDED] * 2


async def test_runs_side_by_side_share_one_stream_and_a_cancelled_one_leaves_the_rest(
    server: RunningServer,
) -> None:
    with agent_processes(address(server), "pair", 2, "--handler", f"{HANDLERS}:sleep"):
        async with Client(address(server)) as client:
            await wait_for_agents(client, 2)
            # Given one run its caller gives up on while 20 others run beside it
            given_up = asyncio.create_task(
                client.tasks.run(role="pair", payload={"seconds": 5.0}, wait_timeout=30)
            )
            runs = [
                client.tasks.run(role="pair", payload={"seconds": 0.01}, wait_timeout=30)
                for _ in range(20)
            ]

            async def given_up_running() -> list[Task]:
                running, _ = await client.tasks.list(state=Task.STATE_RUNNING)
                return [task for task in running if task.payload["seconds"] == 5.0]

            await until(given_up_running, "the run given up on to be running")
            given_up.cancel()
            done = await asyncio.gather(*runs)
            # then the others all end, and so does a run started afterwards,
            assert {task.state for task in done} == {Task.STATE_SUCCEEDED}
            assert len({task.id for task in done}) == 20
            with pytest.raises(asyncio.CancelledError):
                await given_up
            after = await client.tasks.run(role="pair", payload={"seconds": 0}, wait_timeout=30)
            assert after.state == Task.STATE_SUCCEEDED

    # and all of them went over one RunTaskStream call, which ended with the client.
    async def stream_calls() -> float:
        return _finished_calls(server, "/godel.v1.TaskService/RunTaskStream")

    assert await until(stream_calls, "the RunTaskStream call to end") == 1
    assert _finished_calls(server, "/godel.v1.TaskService/RunTask") == 0


async def test_a_run_left_waiting_by_a_dead_coordinator_fails_and_the_next_one_reconnects(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    coordinator = CoordinatorProcess(tmp_path / "data")
    try:
        coordinator.start()
        with agent_processes(coordinator.address, "survivor", 1, "--handler", f"{HANDLERS}:echo"):
            async with Client(coordinator.address) as client:
                await wait_for_agents(client, 1)
                first = await client.tasks.run(role="survivor", wait_timeout=20)
                # Given a run waiting on the shared stream for a task nobody runs
                waiting = asyncio.create_task(
                    client.tasks.run(role="nobody-runs-this", wait_timeout=60)
                )

                async def queued() -> list[Task]:
                    return (await client.tasks.list(state=Task.STATE_QUEUED))[0]

                await until(queued, "the waiting run's task to be queued")
                # when the coordinator dies, that run fails with the stream's error,
                coordinator.kill()
                with pytest.raises(RPCError) as broken:
                    await waiting
                assert broken.value.code == grpc.StatusCode.UNAVAILABLE
                # and once it is back, the same client's next run opens a new stream.
                coordinator.start(port=coordinator.port)
                await wait_for_agents(client, 1)
                again = await client.tasks.run(role="survivor", wait_timeout=20)
                assert again.state == Task.STATE_SUCCEEDED and again.id != first.id
    finally:
        coordinator.stop()


def _finished_calls(server: RunningServer, method: str) -> float:
    """Calls of `method` the coordinator has finished, whatever their status."""
    (family,) = [f for f in server.registry.collect() if f.name == "godel_rpc_handled"]
    return sum(
        s.value
        for s in family.samples
        if s.name == "godel_rpc_handled_total" and s.labels.get("method") == method
    )


async def test_a_repeated_key_is_answered_once_the_first_submission_is_durable(
    server: RunningServer,
) -> None:
    # Given a RunTask whose submission is not committed yet (it rides with a later
    # commit, at most 5 ms on),
    coordinator = server.coordinator
    request = task_pb.SubmitTaskRequest(role="nobody-runs-this", idempotency_key="twice")
    running = asyncio.create_task(coordinator.run_task(request))
    await asyncio.sleep(0)  # its first step accepts the task and waits for the end
    assert "twice" in coordinator.state.idempotency
    # when the same key is submitted again, the answer names the same task, and that
    # task is in the log by then: a crash now could not lose what the answer confirmed.
    (repeat,) = await coordinator.submit_tasks([request])
    assert repeat.id == coordinator.state.idempotency["twice"]
    events = await coordinator.store.read(0, 1000, stream=f"task/{repeat.id}")
    assert [e.type for e in events] == ["task.submitted"]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_ended_tasks_past_the_retention_are_read_from_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from godel_grpc.config import ServeConfig
    from godel_grpc.server import start_server

    config = ServeConfig(
        listen="127.0.0.1:0", metrics_listen="", data_dir=tmp_path, task_retention=2
    )
    running = await start_server(config, CollectorRegistry())
    try:
        async with Client(f"127.0.0.1:{running.port}") as client:
            with agent_processes(address(running), "keeper", 1, "--handler", f"{HANDLERS}:echo"):
                await wait_for_agents(client, 1)
                first = await client.tasks.run(
                    role="keeper", idempotency_key="first", wait_timeout=20
                )
                for _ in range(4):
                    await client.tasks.run(role="keeper", wait_timeout=20)
            # Given the first task left memory (only the 2 newest ended tasks stay)
            assert first.id not in running.coordinator.state.tasks
            listed, _ = await client.tasks.list()
            assert first.id not in [t.id for t in listed]
            # Then GetTask, WatchTask, a repeated idempotency key and CancelTask still know it
            again = await client.tasks.get(first.id)
            assert again.state == Task.STATE_SUCCEEDED and again.output == first.output
            watched = [t async for t in client.tasks.watch(first.id, timeout=5)]
            assert [t.state for t in watched] == [Task.STATE_SUCCEEDED]
            repeat = await client.tasks.submit(role="keeper", idempotency_key="first")
            assert repeat.id == first.id and repeat.state == Task.STATE_SUCCEEDED
            with pytest.raises(RPCError) as ended:
                await client.tasks.cancel(first.id)
            assert ended.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await running.stop(grace=1.0)


async def test_retries_wait_their_backoff_doubling_each_time(
    server: RunningServer, client: Client
) -> None:
    with agent_processes(address(server), "backoff", 1, "--handler", f"{HANDLERS}:fail_when"):
        await wait_for_agents(client, 1)
        request = task_request(
            role="backoff", payload={"fail": True, "retryable": True}, max_attempts=3
        )
        request.retry_backoff.FromMilliseconds(300)
        (task,) = await client.tasks.submit_many([request])
        done = await client.tasks.wait(task.id, timeout=20)
    assert done.state == Task.STATE_FAILED and done.attempts == 3
    await server.coordinator.journal.flush()  # leases are journalled lazily
    recorded = await server.coordinator.store.read(0, 100, stream=f"task/{task.id}")
    times = {}
    for stored in recorded:
        event = event_pb2.Event.FromString(stored.data)
        kind = event.WhichOneof("payload")
        if kind == "task_leased":
            times[("leased", event.task_leased.attempt)] = event.time.ToNanoseconds() / 1e9
        elif kind == "task_attempt_failed":
            attempt = len([k for k in times if k[0] == "failed"]) + 1
            times[("failed", attempt)] = event.time.ToNanoseconds() / 1e9
    # The second attempt started at least 0.3 s after the first failed, the third 0.6 s
    assert times[("leased", 2)] - times[("failed", 1)] >= 0.3
    assert times[("leased", 3)] - times[("failed", 2)] >= 0.6


async def test_a_watch_left_early_is_cancelled_on_the_server(
    server: RunningServer, client: Client
) -> None:
    # Nobody serves the role, so the task stays QUEUED and its watch stays open.
    task = await client.tasks.submit(role="nobody-serves-this", title="wait")
    async for update in client.tasks.watch(task.id, timeout=30):
        assert update.id == task.id
        break  # the caller stops reading after the first state
    watchers = server.coordinator._watchers  # the server's open WatchTask streams
    deadline = asyncio.get_running_loop().time() + 10
    while task.id in watchers:
        assert asyncio.get_running_loop().time() < deadline, "the call stayed open"
        await asyncio.sleep(0.02)


async def test_list_pages_through_one_state_newest_first(
    server: RunningServer, client: Client
) -> None:
    # Given five tasks nobody serves, two of them cancelled
    made = [await client.tasks.submit(role="nobody", title=f"t{i}") for i in range(1, 6)]
    for task in (made[1], made[3]):
        await client.tasks.cancel(task.id)
    queued = [made[4].id, made[2].id, made[0].id]
    cancelled = [made[3].id, made[1].id]

    async def pages(state: int, size: int) -> list[list[str]]:
        found: list[list[str]] = []
        token = ""
        while True:
            page, token = await client.tasks.list(page_size=size, page_token=token, state=state)
            found.append([task.id for task in page])
            if not token:
                return found

    # Then each state pages through exactly its own tasks, newest first
    assert await pages(Task.STATE_QUEUED, 2) == [queued[:2], queued[2:]]
    assert await pages(Task.STATE_QUEUED, 3) == [queued]
    assert await pages(Task.STATE_QUEUED, 1) == [[i] for i in queued]
    assert await pages(Task.STATE_CANCELLED, 1) == [[i] for i in cancelled]
    assert await pages(Task.STATE_RUNNING, 2) == [[]]
    everything, _ = await client.tasks.list(page_size=10)
    assert [task.id for task in everything] == [t.id for t in reversed(made)]
