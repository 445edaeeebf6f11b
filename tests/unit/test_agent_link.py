"""The agent SDK against a real gRPC server on loopback.

The server's AgentLinkService is a scripted stand-in for the coordinator, defined here:
the real coordinator is tested elsewhere; this pins the agent's side of the link
protocol (what it sends, when, and how it reacts to what it is sent). Tests wait on
conditions over what the stand-in has seen; timeouts are only safety nets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_link_service_pb2_grpc as link_grpc
from godel_grpc.agent import Agent, AgentRejected, ExecHandler, TaskContext, TaskFailed

SAFETY_NET = 5.0  # seconds; only reached when something is broken
REPO = Path(__file__).resolve().parents[2]
GRPC_NATIVE_LOG = re.compile(r"^[IWEF]\d{4} ")


class Watch:
    """Lets tests wait until a condition over changing state holds, without polling."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        try:
            async with asyncio.timeout(SAFETY_NET):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


class Link:
    """One Connect stream, as the stand-in coordinator sees it."""

    def __init__(self, hello: link_pb2.AgentHello) -> None:
        self.hello = hello
        self.received: list[link_pb2.AgentMessage] = []
        self.agent_closed = False
        self.watch = Watch()
        self._outgoing: asyncio.Queue[link_pb2.CoordinatorMessage | grpc.StatusCode | None] = (
            asyncio.Queue()
        )

    def send(self, **parts: Any) -> None:
        self._outgoing.put_nowait(link_pb2.CoordinatorMessage(**parts))

    def end(self, status: grpc.StatusCode | None = None) -> None:
        """Ends the stream from the coordinator's side, with OK or with `status`."""
        self._outgoing.put_nowait(status)

    async def until(self, predicate: Callable[[Link], bool], what: str = "condition") -> None:
        await self.watch.until(lambda: predicate(self), what)

    def results(self) -> dict[str, link_pb2.TaskResult]:
        return {r.attempt_id: r for m in self.received for r in m.results}

    def released(self) -> list[str]:
        return [a for m in self.received for a in m.released_attempt_ids]

    def saw_draining(self) -> bool:
        return any(m.draining for m in self.received)


class StandInCoordinator(link_grpc.AgentLinkServiceServicer):
    """Welcomes every agent as agent-1 and lets the test script the rest."""

    def __init__(self) -> None:
        self.address = ""
        self.server: Any = None  # the grpc.aio.Server, once serving
        self.links: list[Link] = []
        self.reject: grpc.StatusCode | None = None
        self.watch = Watch()
        self.heartbeat_interval = 30.0

    async def next_link(self, number: int | None = None) -> Link:
        """Waits for the `number`-th link (1-based; default: one more than seen so far)."""
        wanted = number if number is not None else len(self.links) + 1
        await self.watch.until(lambda: len(self.links) >= wanted, f"link {wanted}")
        return self.links[wanted - 1]

    async def Connect(
        self,
        request_iterator: AsyncIterator[link_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[link_pb2.CoordinatorMessage]:
        first = await anext(aiter(request_iterator))
        if self.reject is not None:
            await context.abort(self.reject, "rejected by the test")
        link = Link(first.hello)
        self.links.append(link)
        self.watch.poke()
        reading = asyncio.create_task(self._read(request_iterator, link))
        try:
            yield link_pb2.CoordinatorMessage(
                welcome=link_pb2.AgentWelcome(
                    agent_id="agent-1",
                    name=first.hello.name or "auto-1",
                    resume_token="token-1",
                    heartbeat_interval=duration_pb2.Duration(
                        nanos=int(self.heartbeat_interval % 1 * 1e9),
                        seconds=int(self.heartbeat_interval),
                    ),
                    resumed=bool(first.hello.resume_token),
                )
            )
            while True:
                getting = asyncio.create_task(link._outgoing.get())
                await asyncio.wait({getting, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    # The agent half-closed: like the coordinator, end the stream.
                    getting.cancel()
                    return
                item = getting.result()
                if item is None:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "ended by the test")
                yield item
        finally:
            reading.cancel()

    async def _read(self, requests: AsyncIterator[link_pb2.AgentMessage], link: Link) -> None:
        async for message in requests:
            link.received.append(message)
            link.watch.poke()
        link.agent_closed = True
        link.watch.poke()


async def serve(stand_in: StandInCoordinator, address: str = "127.0.0.1:0") -> StandInCoordinator:
    server = grpc.aio.server(
        # What the real coordinator must also allow: the agent's keepalive pings on a
        # stream where the coordinator itself has nothing to say for a while.
        options=[
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    link_grpc.add_AgentLinkServiceServicer_to_server(stand_in, server)
    port = server.add_insecure_port(address)
    await server.start()
    stand_in.address = f"127.0.0.1:{port}"
    stand_in.server = server
    return stand_in


@pytest.fixture
async def coordinator() -> AsyncIterator[StandInCoordinator]:
    stand_in = await serve(StandInCoordinator())
    yield stand_in
    await stand_in.server.stop(None)


def assignment(n: int, **fields: Any) -> link_pb2.TaskAssignment:
    payload = struct_pb2.Struct()
    payload.update(fields.pop("payload", {}))
    return link_pb2.TaskAssignment(
        task_id=f"t-{n}",
        attempt_id=f"a-{n}",
        attempt=1,
        role="builder",
        idempotency_key=f"k-{n}",
        payload=payload,
        **fields,
    )


def make_agent(coordinator: StandInCoordinator, **options: Any) -> Agent:
    options.setdefault("role", "builder")
    options.setdefault("drain_grace", 1.0)
    return Agent(coordinator.address, **options)


class Gate:
    """A handler that holds attempts until the test opens the gate, counting them."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.inside = 0
        self.peak = 0
        self.watch = Watch()

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.watch.poke()
        try:
            await self.opened.wait()
            return {"task": ctx.task_id}
        finally:
            self.inside -= 1
            self.watch.poke()

    async def until_inside(self, n: int) -> None:
        await self.watch.until(lambda: self.inside == n, f"{n} attempts inside")


async def test_hello_carries_the_agent_description_and_welcome_gives_identity(
    coordinator: StandInCoordinator,
) -> None:
    # Given an agent with a role, an extra action, a named action handler and labels
    agent = make_agent(
        coordinator,
        actions=["deploy"],
        capacity=3,
        name="builder-1",
        labels={"zone": "a"},
        version="1.2.3",
    )
    agent.handler(lambda ctx: {"ran": ctx.task_id})
    agent.action("lint")(lambda ctx: None)

    async with agent:
        # When it connects, Then its first message is a hello describing it
        link = await coordinator.next_link()
        assert link.hello == link_pb2.AgentHello(
            name="builder-1",
            role="builder",
            actions=["deploy", "lint"],
            capacity=3,
            labels={"zone": "a"},
            version="1.2.3",
        )
        # And after the welcome it runs assignments under the identity it was given
        link.send(assignments=[assignment(1), assignment(2, action="lint")])
        await link.until(lambda lk: len(lk.results()) == 2, "two results")

    assert agent.agent_id == "agent-1"
    first, second = link.results()["a-1"], link.results()["a-2"]
    assert first.task_id == "t-1"
    assert dict(first.output) == {"ran": "t-1"}
    assert first.duration.ToNanoseconds() > 0
    assert second.HasField("output") and dict(second.output) == {}


async def test_results_that_are_ready_together_travel_in_one_message(
    coordinator: StandInCoordinator,
) -> None:
    # Given eight attempts held inside their handler
    gate = Gate()
    agent = make_agent(coordinator, capacity=8)
    agent.handler(gate)
    async with agent:
        link = await coordinator.next_link()
        link.send(assignments=[assignment(n) for n in range(1, 9)])
        await gate.until_inside(8)

        # When they all finish at once
        gate.opened.set()
        await link.until(lambda lk: len(lk.results()) == 8, "eight results")

    # Then their results were batched rather than sent one message each
    carrying = [m for m in link.received if m.results]
    assert len(carrying) < 8
    assert max(len(m.results) for m in carrying) > 1
    assert {dict(r.output)["task"] for r in link.results().values()} == {
        f"t-{n}" for n in range(1, 9)
    }


async def test_agent_runs_no_more_than_its_capacity(coordinator: StandInCoordinator) -> None:
    # Given an agent of capacity 2 and a coordinator that over-assigns
    gate = Gate()
    agent = make_agent(coordinator, capacity=2)
    agent.handler(gate)
    async with agent:
        link = await coordinator.next_link()

        # When five assignments arrive at once
        link.send(assignments=[assignment(n) for n in range(1, 6)])

        # Then two run, two wait their turn, and the one beyond that is given back
        await gate.until_inside(2)
        await link.until(lambda lk: lk.released() == ["a-5"], "a-5 released")
        assert gate.inside == 2
        gate.opened.set()
        await link.until(lambda lk: len(lk.results()) == 4, "four results")

    assert gate.peak == 2
    assert sorted(link.results()) == ["a-1", "a-2", "a-3", "a-4"]


async def test_cancellation_stops_the_handler_and_sends_no_result(
    coordinator: StandInCoordinator,
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()
    seen_cancelled: list[bool] = []

    async def handler(ctx: TaskContext) -> dict[str, Any]:
        if ctx.task_id == "t-2":
            return {"quick": True}
        started.set()
        try:
            await asyncio.Event().wait()  # forever
        finally:
            seen_cancelled.append(ctx.cancelled.is_set())
            stopped.set()
        return {}

    agent = make_agent(coordinator)
    agent.handler(handler)
    async with agent:
        link = await coordinator.next_link()
        link.send(assignments=[assignment(1)])
        await asyncio.wait_for(started.wait(), SAFETY_NET)

        # When the coordinator cancels the running attempt
        link.send(
            cancellations=[link_pb2.TaskCancellation(task_id="t-1", attempt_id="a-1", reason="x")]
        )

        # Then the handler is stopped and its slot serves the next assignment
        await asyncio.wait_for(stopped.wait(), SAFETY_NET)
        link.send(assignments=[assignment(2)])
        await link.until(lambda lk: "a-2" in lk.results(), "a-2's result")

    # And no result was ever sent for the cancelled attempt
    assert "a-1" not in link.results()
    assert seen_cancelled == [True]


@pytest.mark.parametrize("ending", [None, grpc.StatusCode.UNAVAILABLE], ids=["ok", "unavailable"])
async def test_reconnect_resumes_identity_and_delivers_running_work(
    coordinator: StandInCoordinator, ending: grpc.StatusCode | None
) -> None:
    # Given an attempt running on the first link
    gate = Gate()
    agent = make_agent(coordinator)
    agent.handler(gate)
    async with agent:
        first = await coordinator.next_link()
        first.send(assignments=[assignment(1)])
        await gate.until_inside(1)

        # When the coordinator ends the stream
        first.end(ending)

        # Then the agent comes back presenting the resume token it was welcomed with
        second = await coordinator.next_link()
        assert first.hello.resume_token == ""
        assert second.hello.resume_token == "token-1"
        # And the attempt kept running across the gap; its result goes on the new link
        assert gate.inside == 1
        gate.opened.set()
        await second.until(lambda lk: "a-1" in lk.results(), "a-1 on the new link")

    assert agent.agent_id == "agent-1"


async def test_a_restarted_coordinator_is_found_again(coordinator: StandInCoordinator) -> None:
    # Given an attempt running when the coordinator's server goes away altogether
    gate = Gate()
    agent = make_agent(coordinator)
    agent.handler(gate)
    async with agent:
        first = await coordinator.next_link()
        first.send(assignments=[assignment(1)])
        await gate.until_inside(1)
        await coordinator.server.stop(None)

        # When a new server comes up on the same address
        restarted = await serve(StandInCoordinator(), coordinator.address)
        try:
            # Then the agent reconnects to it as itself and delivers the result
            link = await restarted.next_link()
            assert link.hello.resume_token == "token-1"
            gate.opened.set()
            await link.until(lambda lk: "a-1" in lk.results(), "a-1 after the restart")
        finally:
            await agent.shutdown()
            await restarted.server.stop(None)


async def test_an_agent_with_several_addresses_follows_the_active_coordinator(
    coordinator: StandInCoordinator,
) -> None:
    # Given a standby that refuses links (UNAVAILABLE), listed before the active one
    standby = await serve(StandInCoordinator())
    standby.reject = grpc.StatusCode.UNAVAILABLE
    gate = Gate()
    agent = Agent(f"{standby.address},{coordinator.address}", role="builder", drain_grace=1.0)
    agent.handler(gate)
    try:
        async with agent:
            # Then the agent moves on to the active coordinator and runs its work
            first = await coordinator.next_link()
            first.send(assignments=[assignment(1)])
            await gate.until_inside(1)

            # When the active one dies and the standby takes over
            standby.reject = None
            await coordinator.server.stop(None)

            # Then the agent reconnects to the former standby as itself and delivers
            link = await standby.next_link()
            assert link.hello.resume_token == "token-1"
            gate.opened.set()
            await link.until(lambda lk: "a-1" in lk.results(), "a-1 on the former standby")
    finally:
        await standby.server.stop(None)


async def test_drain_from_the_coordinator_finishes_running_work_then_closes(
    coordinator: StandInCoordinator,
) -> None:
    gate = Gate()
    agent = make_agent(coordinator, capacity=2)
    agent.handler(gate)
    running = asyncio.create_task(agent.run())
    link = await coordinator.next_link()
    link.send(assignments=[assignment(1)])
    await gate.until_inside(1)

    # When the coordinator asks the agent to drain
    link.send(drain=True)

    # Then the agent says it is draining and gives back work sent after that
    await link.until(Link.saw_draining, "draining=True")
    link.send(assignments=[assignment(2)])
    await link.until(lambda lk: lk.released() == ["a-2"], "a-2 released")
    # And the running attempt finishes, its result is sent, and the agent closes
    gate.opened.set()
    await link.until(lambda lk: lk.agent_closed, "the agent to close its side")
    await asyncio.wait_for(running, SAFETY_NET)
    assert list(link.results()) == ["a-1"]
    assert agent.draining


async def test_shutdown_releases_attempts_that_outlast_the_grace_period(
    coordinator: StandInCoordinator,
) -> None:
    gate = Gate()

    async def handler(ctx: TaskContext) -> dict[str, Any]:
        if ctx.payload.get("hang"):
            await asyncio.Event().wait()
        return await gate(ctx)

    agent = make_agent(coordinator, capacity=2)
    agent.handler(handler)
    running = asyncio.create_task(agent.run())
    link = await coordinator.next_link()
    link.send(assignments=[assignment(1), assignment(2, payload={"hang": True})])
    await gate.until_inside(1)

    # When the agent is shut down with a short grace period (as on SIGTERM)
    shutdown = asyncio.create_task(agent.shutdown(grace=0.3))

    # Then the coordinator hears it is draining, the attempt that finishes in time
    # reports, the one that does not is released unfinished, and the link closes
    await link.until(Link.saw_draining, "draining=True")
    gate.opened.set()
    await link.until(lambda lk: lk.released() == ["a-2"], "a-2 released")
    await asyncio.wait_for(shutdown, SAFETY_NET)
    await asyncio.wait_for(running, SAFETY_NET)
    assert list(link.results()) == ["a-1"]
    assert link.agent_closed


async def test_shutdown_is_idempotent(coordinator: StandInCoordinator) -> None:
    agent = make_agent(coordinator)
    agent.handler(lambda ctx: None)
    running = asyncio.create_task(agent.run())
    await coordinator.next_link()

    await asyncio.gather(agent.shutdown(), agent.shutdown())
    await agent.shutdown()

    await asyncio.wait_for(running, SAFETY_NET)


async def test_heartbeat_is_sent_when_there_is_nothing_else_to_say(
    coordinator: StandInCoordinator,
) -> None:
    coordinator.heartbeat_interval = 0.05
    agent = make_agent(coordinator)
    agent.handler(lambda ctx: None)
    async with agent:
        link = await coordinator.next_link()
        await link.until(lambda lk: link_pb2.AgentMessage() in lk.received, "a heartbeat")


async def test_handler_outcomes_become_results(coordinator: StandInCoordinator) -> None:
    agent = make_agent(coordinator, capacity=5)

    @agent.action("boom")
    async def boom(ctx: TaskContext) -> None:
        raise ValueError("bad input")

    @agent.action("refuse")
    def refuse(ctx: TaskContext) -> None:
        raise TaskFailed("BAD_REQUEST", "nope", retryable=False)

    @agent.action("slow")
    async def slow(ctx: TaskContext) -> None:
        await asyncio.Event().wait()

    @agent.action("sync")
    def in_thread(ctx: TaskContext) -> dict[str, Any]:
        return {"thread": threading.current_thread().name}

    @agent.action("weird")
    def weird(ctx: TaskContext) -> Any:
        return {"when": object()}

    timeout = duration_pb2.Duration(nanos=50_000_000)
    async with agent:
        link = await coordinator.next_link()
        link.send(
            assignments=[
                assignment(1, action="boom"),
                assignment(2, action="refuse"),
                assignment(3, action="slow", timeout=timeout),
                assignment(4, action="sync"),
                assignment(5, action="weird"),
            ]
        )
        await link.until(lambda lk: len(lk.results()) == 5, "five results")

    results = link.results()
    errors = {a: (r.error.code, r.error.retryable) for a, r in results.items() if r.error.code}
    assert errors == {
        "a-1": ("HANDLER_ERROR", True),
        "a-2": ("BAD_REQUEST", False),
        "a-3": ("TIMEOUT", True),
        "a-5": ("INVALID_OUTPUT", False),
    }
    assert results["a-1"].error.message == "bad input"
    assert results["a-2"].error.message == "nope"
    assert results["a-4"].output["thread"].startswith("godel-handler")


async def test_an_assignment_without_a_handler_fails_retryably(
    coordinator: StandInCoordinator,
) -> None:
    agent = make_agent(coordinator)
    agent.action("deploy")(lambda ctx: None)
    async with agent:
        link = await coordinator.next_link()
        link.send(assignments=[assignment(1)])
        await link.until(lambda lk: "a-1" in lk.results(), "a-1's result")

    assert link.results()["a-1"].error.code == "NO_HANDLER"
    assert link.results()["a-1"].error.retryable


async def test_progress_and_log_lines_reach_the_coordinator(
    coordinator: StandInCoordinator,
) -> None:
    async def handler(ctx: TaskContext) -> None:
        await ctx.progress(0.5, "half way")
        ctx.log("warn", "careful")

    agent = make_agent(coordinator)
    agent.handler(handler)
    async with agent:
        link = await coordinator.next_link()
        link.send(assignments=[assignment(1)])
        await link.until(lambda lk: "a-1" in lk.results(), "a-1's result")

    progress = [p for m in link.received for p in m.progress]
    logs = [line for m in link.received for line in m.logs]
    assert [(p.attempt_id, p.fraction, p.message) for p in progress] == [("a-1", 0.5, "half way")]
    assert [(line.task_id, line.level, line.message) for line in logs] == [
        ("t-1", "warning", "careful")
    ]
    assert logs[0].time.seconds > 0


async def test_an_exec_handler_serves_tasks_over_the_link(
    coordinator: StandInCoordinator, tmp_path: Path
) -> None:
    # Given an agent whose handler is a command that echoes the task JSON back
    seen_stdin = tmp_path / "stdin.json"
    agent = make_agent(coordinator)
    agent.handler(ExecHandler(f"tee {seen_stdin}"))
    async with agent:
        link = await coordinator.next_link()
        link.send(assignments=[assignment(1, payload={"files": ["a.py"], "n": 2})])
        await link.until(lambda lk: "a-1" in lk.results(), "a-1's result")

    # Then the payload made the round trip: Struct, JSON on stdin, stdout, Struct
    output = json_format.MessageToDict(link.results()["a-1"].output)
    assert output["payload"] == {"files": ["a.py"], "n": 2}
    # And the command saw a whole number as one, not as 2.0
    assert type(json.loads(seen_stdin.read_text())["payload"]["n"]) is int
    assert output["idempotencyKey"] == "k-1"


async def test_a_rejected_hello_ends_run_with_agent_rejected(
    coordinator: StandInCoordinator,
) -> None:
    coordinator.reject = grpc.StatusCode.INVALID_ARGUMENT
    agent = make_agent(coordinator)
    agent.handler(lambda ctx: None)

    with pytest.raises(AgentRejected) as rejected:
        await asyncio.wait_for(agent.run(), SAFETY_NET)

    assert rejected.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_godel_agent_process_drains_on_sigterm_and_exits_zero(
    coordinator: StandInCoordinator,
) -> None:
    # Given `godel agent` running the test handlers in its own process
    script = (
        "import argparse, sys\n"
        "from godel_grpc.agent import add_agent_arguments, run_agent_command\n"
        "parser = argparse.ArgumentParser()\n"
        "add_agent_arguments(parser)\n"
        "sys.exit(run_agent_command(parser.parse_args()))\n"
    )
    env = {**os.environ, "GODEL_ROLE": "builder", "GODEL_CAPACITY": "2"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        "--coordinator",
        coordinator.address,
        "--handler",
        "tests.agents.handlers:sleep",
        "--drain-grace",
        "1",
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        link = await coordinator.next_link()
        assert link.hello.capacity == 2
        # One attempt that can finish within the grace period, one that cannot
        link.send(
            assignments=[
                assignment(1, payload={"seconds": 0.4}),
                assignment(2, payload={"seconds": 60}),
            ]
        )
        await link.until(
            lambda lk: any(p.attempt_id == "a-1" for m in lk.received for p in m.progress),
            "progress from a-1",
        )

        # When it gets SIGTERM
        process.send_signal(signal.SIGTERM)

        # Then it drains: the short attempt reports, the long one is released, exit 0
        assert await asyncio.wait_for(process.wait(), SAFETY_NET) == 0
        assert link.saw_draining()
        assert list(link.results()) == ["a-1"]
        assert link.results()["a-1"].HasField("output")
        assert link.released() == ["a-2"]
        assert link.agent_closed
        # And its own log is JSON lines (gRPC's native logger may add lines of its own)
        assert process.stderr is not None
        lines = (await process.stderr.read()).decode().splitlines()
        records = [json.loads(line) for line in lines if not GRPC_NATIVE_LOG.match(line)]
        assert {"time", "level", "message"} <= set(records[0])
        assert any(r["message"] == "signal received; draining" for r in records)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
