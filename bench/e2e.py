"""End-to-end measurements through a real coordinator process and real agent processes.

The coordinator is `godel serve` with its defaults (SQLite store in a fresh data
directory, info logs), the agents are `godel agent` processes running
`bench.handlers:noop`. Producers are separate processes (`bench.producer`) so that the
benchmark process only keeps the clock and watches for completion.

How completion is observed, and why: see `wait_drained` and `SucceededCounter`. The
default is polling ListTasks after the producers are done, because on this coordinator
it is by far the cheaper of the two: one SubscribeEvents stream message per finished
task costs the coordinator more CPU than the rest of the task's life (the benchmark can
measure both: ``python -m bench --observer events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import PYTHON, Child, Children, read_json_line, send_line, wait_for_log
from godel_grpc._proto.godel.v1 import agent_pb2, task_pb2
from godel_grpc._proto.godel.v1 import agent_service_pb2 as agent_pb
from godel_grpc._proto.godel.v1 import agent_service_pb2_grpc as agent_grpc
from godel_grpc._proto.godel.v1 import event_service_pb2 as event_pb
from godel_grpc._proto.godel.v1 import event_service_pb2_grpc as event_grpc
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.client import Client, task_request

ROLE = "bench"
HANDLER = "bench.handlers:noop"
POLL_INTERVAL = 0.01
"""Seconds between completion polls; bounds how late the end of a run is noticed."""


@dataclass
class Coordinator:
    """A running `godel serve` child and how to reach it."""

    child: Child
    address: str
    process: psutil.Process
    metrics_port: int | None

    def rss_bytes(self) -> int:
        """Resident set size of the coordinator process now."""
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        """User plus system CPU the coordinator used so far (all its threads)."""
        times = self.process.cpu_times()
        return float(times.user + times.system)


async def start_coordinator(
    children: Children, data_dir: str, *extra: str, name: str = "coordinator"
) -> Coordinator:
    """Starts `godel serve` on free loopback ports; returns once it logged "serving".

    `extra` flags go last (for example ``--store memory://``).
    """
    child = await children.start(
        name,
        [
            PYTHON, "-m", "godel_grpc.cli", "serve",
            "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--data-dir", data_dir,
            *extra,
        ],
    )  # fmt: skip
    record = await wait_for_log(child, lambda r: r.get("message") == "serving")
    port = record.get("metrics_port")
    return Coordinator(
        child,
        f"127.0.0.1:{record['port']}",
        psutil.Process(child.pid),
        int(port) if port else None,
    )


async def scrape(coordinator: Coordinator) -> dict[str, float]:
    """The coordinator's Prometheus samples, summed over labels, by sample name.

    One HTTP request, taken outside the timed part of a run: it explains a run (how many
    commits, how many events each) at no cost to the figures.
    """
    if coordinator.metrics_port is None:
        return {}
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


async def start_agents(
    children: Children, coordinator: Coordinator, count: int, capacity: int
) -> list[Child]:
    """Starts `count` `godel agent` processes and waits until the coordinator has them all."""
    agents = []
    for index in range(count):
        args = [
            PYTHON, "-m", "godel_grpc.cli", "agent",
            "--coordinator", coordinator.address,
            "--role", ROLE,
            "--name", f"{ROLE}-{index}",
            "--capacity", str(capacity),
            "--handler", HANDLER,
        ]  # fmt: skip
        agents.append(await children.start(f"agent-{index}", args))
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = agent_grpc.AgentServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            response = await stub.ListAgents(agent_pb.ListAgentsRequest(role=ROLE, page_size=100))
            ready = [a for a in response.agents if a.state == agent_pb2.Agent.STATE_READY]
            if len(ready) >= count:
                return agents
            for agent in agents:
                if not agent.alive():
                    tail = "\n".join(agent.log_lines()[-10:])
                    raise RuntimeError(f"{agent.name} exited:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ready)} of {count} agents connected")
            await asyncio.sleep(0.1)


def process_cpu(children: list[Child]) -> float:
    """CPU seconds used so far by these children (user plus system)."""
    total = 0.0
    for child in children:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(child.pid).cpu_times()
            total += times.user + times.system
    return total


async def _any_in_state(stub: task_grpc.TaskServiceAsyncStub, state: int) -> bool:
    request = task_pb.ListTasksRequest(page_size=1, state=state)  # type: ignore[arg-type]
    response = await stub.ListTasks(request, timeout=30)
    return len(response.tasks) > 0


async def wait_drained(stub: task_grpc.TaskServiceAsyncStub, timeout: float = 120.0) -> float:
    """Polls until no task is queued or running; returns `time.perf_counter()` then.

    ListTasks scans newest first and stops at the first match, so "is any task running"
    costs the coordinator a few steps while work remains (the running tasks are the
    newest) and one pass over its task list at the very end. RUNNING is asked first as
    a cheap pre-check; only when it is empty are QUEUED and then RUNNING asked again, in
    that order: tasks only move forward (queued, running, done), so "none queued at t1
    and none running at t2 > t1" means every task submitted before t1 has finished.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not await _any_in_state(stub, task_pb2.Task.STATE_RUNNING):
            queued = await _any_in_state(stub, task_pb2.Task.STATE_QUEUED)
            if not queued and not await _any_in_state(stub, task_pb2.Task.STATE_RUNNING):
                return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks still unfinished after {timeout:g} s")
        await asyncio.sleep(POLL_INTERVAL)


async def count_in_state(stub: task_grpc.TaskServiceAsyncStub, state: int) -> int:
    """How many tasks are in `state` (pages through all of them: use outside timing)."""
    total, token = 0, ""
    while True:
        request = task_pb.ListTasksRequest(page_size=1000, page_token=token, state=state)  # type: ignore[arg-type]
        response = await stub.ListTasks(request, timeout=60)
        total += len(response.tasks)
        token = response.next_page_token
        if not token:
            return total


class SucceededCounter:
    """Counts ``task.succeeded`` events on one SubscribeEvents stream.

    The alternative completion observer: exact and push-based, but the coordinator
    serves it by reading each committed batch back from SQLite and sending one stream
    message per event, which is a per-task cost on the very process being measured.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = event_grpc.EventServiceStub(channel)
        self.count = 0
        self._target = 0
        self._reached: asyncio.Future[float] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribes from the start of the log; returns once the stream is live."""
        live = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(live))
        await live

    async def _follow(self, live: asyncio.Future[None]) -> None:
        request = event_pb.SubscribeEventsRequest(after_id=0, types=["task.succeeded"])
        call = self._stub.SubscribeEvents(request)
        if not live.done():
            live.set_result(None)  # events before this point are caught up anyway
        async for _ in call:
            self.count += 1
            reached = self._reached
            if reached is not None and self.count >= self._target and not reached.done():
                reached.set_result(time.perf_counter())

    async def reached(self, target: int, timeout: float = 120.0) -> float:
        """Waits until `target` events were counted; `time.perf_counter()` at that event."""
        if self.count >= target:
            return time.perf_counter()
        self._target = target
        self._reached = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self._reached, timeout)

    async def close(self) -> None:
        """Cancels the subscription."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task


@dataclass
class Throughput:
    """One throughput run's figures."""

    tasks: int
    seconds: float
    submit_seconds: float
    """Until the last producer's last submit call returned."""
    coordinator_cpu: float
    agents_cpu: float
    producers_cpu: float
    call_p50_ms: float
    call_p99_ms: float
    failed: int
    metrics: dict[str, float] = field(default_factory=dict)
    """Change of each coordinator metric sample over the run (includes the final polls)."""

    @property
    def rate(self) -> float:
        """Tasks per second from the first submit to the last result observed."""
        return self.tasks / self.seconds


async def throughput(
    children: Children,
    coordinator: Coordinator,
    agents: list[Child],
    stub: task_grpc.TaskServiceAsyncStub,
    *,
    producers: int,
    tasks_per_producer: int,
    batch: int,
    concurrency: int,
    counter: SucceededCounter | None = None,
    stream: bool = False,
) -> Throughput:
    """Runs producers against the coordinator and times the whole batch of tasks.

    The clock starts when the benchmark tells the (already connected and warmed up)
    producers to go and stops when completion is observed: by `counter` when given,
    otherwise by `wait_drained` once every producer's submits have returned.
    """
    args = [
        PYTHON, "-m", "bench.producer",
        "--address", coordinator.address,
        "--count", str(tasks_per_producer),
        "--batch", str(batch),
        "--concurrency", str(concurrency),
        *(["--stream"] if stream else []),
    ]  # fmt: skip
    started = [
        await children.start(f"producer-{batch}-{index}", args, pipes=True)
        for index in range(producers)
    ]
    try:
        for producer in started:
            await read_json_line(producer)
        await wait_drained(stub)  # the producers' warm-up tasks
        metrics_before = await scrape(coordinator)
        total = producers * tasks_per_producer
        target = counter.count + total if counter is not None else 0
        cpu_before = coordinator.cpu_seconds()
        agents_before = process_cpu(agents)
        start = time.perf_counter()
        for producer in started:
            await send_line(producer, "go")
        waiting = asyncio.create_task(counter.reached(target)) if counter is not None else None
        reports = [await read_json_line(producer, timeout=120) for producer in started]
        submitted_at = time.perf_counter()
        end = await waiting if waiting is not None else await wait_drained(stub)
        cpu = coordinator.cpu_seconds() - cpu_before
        agents_cpu = process_cpu(agents) - agents_before
        metrics_after = await scrape(coordinator)
    finally:
        for producer in started:
            await children.stop(producer)
    failed = await count_in_state(stub, task_pb2.Task.STATE_FAILED)
    return Throughput(
        tasks=total,
        seconds=end - start,
        submit_seconds=submitted_at - start,
        coordinator_cpu=cpu,
        agents_cpu=agents_cpu,
        producers_cpu=sum(float(r["cpu_seconds"]) for r in reports),
        metrics={k: v - metrics_before.get(k, 0.0) for k, v in metrics_after.items()},
        call_p50_ms=max(r["call_p50_ms"] for r in reports),
        call_p99_ms=max(r["call_p99_ms"] for r in reports),
        failed=failed,
    )


@dataclass
class RoundTrips:
    """Seconds per sample of the low-load latency run, each list in sample order."""

    total: list[float]
    """Submit, then WatchTask until the task is terminal: what `client.tasks.wait` sees."""
    submit: list[float]
    """The SubmitTask call alone (answered once the task is durable: one commit)."""
    get: list[float]
    """A GetTask call: one RPC to the coordinator with no disk and no agent involved."""
    run: list[float] = field(default_factory=list)
    """One `client.tasks.run`: a message on the client's RunTaskStream, answered once the
    task has ended and that is durable."""
    run_call: list[float] = field(default_factory=list)
    """The same as one RunTask call (unary), for comparison."""
    done_before_watch: int = 0
    """Samples whose task had already ended when WatchTask sent its first message."""


async def round_trips(address: str, samples: int, warmup: int) -> RoundTrips:
    """One task at a time through the public client, as a user would wait for it."""
    result = RoundTrips([], [], [])
    async with Client(address) as client:
        for index in range(warmup + samples):
            start = time.perf_counter()
            task = await client.tasks.submit(role=ROLE)
            submitted = time.perf_counter()
            # client.tasks.wait is exactly this loop; it is spelled out to see the first
            # message, which tells whether the watch had anything left to wait for.
            seen = [update async for update in client.tasks.watch(task.id, timeout=10)]
            end = time.perf_counter()
            if seen[-1].state != task_pb2.Task.STATE_SUCCEEDED:
                state = task_pb2.Task.State.Name(seen[-1].state)
                raise RuntimeError(f"task {task.id} ended {state}")
            if index >= warmup:
                result.total.append(end - start)
                result.submit.append(submitted - start)
                result.done_before_watch += len(seen) == 1
        for index in range(warmup + samples):
            start = time.perf_counter()
            ran = await client.tasks.run(role=ROLE, wait_timeout=10)
            if ran.state != task_pb2.Task.STATE_SUCCEEDED:
                raise RuntimeError(f"task {ran.id} ended {task_pb2.Task.State.Name(ran.state)}")
            if index >= warmup:
                result.run.append(time.perf_counter() - start)
        async with grpc.aio.insecure_channel(address) as channel:
            run_call = task_grpc.TaskServiceStub(channel).RunTask
            for index in range(warmup + samples):
                start = time.perf_counter()
                request = task_pb.RunTaskRequest(task=task_request(role=ROLE))
                ran = (await run_call(request, timeout=10)).task
                if ran.state != task_pb2.Task.STATE_SUCCEEDED:
                    state = task_pb2.Task.State.Name(ran.state)
                    raise RuntimeError(f"task {ran.id} ended {state}")
                if index >= warmup:
                    result.run_call.append(time.perf_counter() - start)
        for index in range(warmup + samples):
            start = time.perf_counter()
            await client.tasks.get(task.id)
            if index >= warmup:
                result.get.append(time.perf_counter() - start)
    return result


@dataclass
class IdleFleet:
    """Coordinator memory before and with many idle agent links."""

    agents: int
    rss_idle: int
    rss_with_agents: int
    connect_seconds: float
    still_ready: int
    """Links the coordinator still counted as ready after the settle time."""

    @property
    def per_agent_kb(self) -> float:
        """Resident memory the coordinator added per idle agent link, in KiB."""
        return (self.rss_with_agents - self.rss_idle) / self.agents / 1024


async def idle_fleet(
    children: Children, coordinator: Coordinator, count: int, settle: float = 3.0
) -> IdleFleet:
    """Measures the coordinator's RSS idle, then with `count` idle links held by one helper.

    The second figure is taken `settle` seconds after the last welcome, once heartbeats
    have flowed on every link, and the helper is killed afterwards (its links drop, and
    the coordinator records them as disconnected).
    """
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        # One call first, so that "idle" means a server that has served, not a cold one.
        await task_grpc.TaskServiceStub(channel).ListTasks(task_pb.ListTasksRequest(page_size=1))
    await asyncio.sleep(0.5)
    rss_idle = coordinator.rss_bytes()
    helper = await children.start(
        "idle-agents",
        [PYTHON, "-m", "bench.idle_agents", "--address", coordinator.address,
         "--count", str(count)],
        pipes=True,
    )  # fmt: skip
    try:
        report = await read_json_line(helper, timeout=120)
        await asyncio.sleep(settle)
        if not helper.alive():
            raise RuntimeError("the idle-agents helper exited")
        rss_with = coordinator.rss_bytes()
        async with Client(coordinator.address) as client:
            fleet = await client.agents.list(role="idle")
        ready = sum(1 for agent in fleet if agent.state == agent_pb2.Agent.STATE_READY)
    finally:
        await children.stop(helper)
    return IdleFleet(count, rss_idle, rss_with, float(report["seconds"]), ready)


async def queued_memory(coordinator: Coordinator, count: int, batch: int = 1_000) -> float:
    """Bytes of coordinator RSS per queued task: `count` small tasks for a role no agent
    serves, submitted in batches, measured against the RSS just before. The task records,
    the scheduler's queue entries and the write path's buffers are all in the figure."""
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = task_grpc.TaskServiceStub(channel)
        await stub.ListTasks(task_pb.ListTasksRequest(page_size=1))
        before = coordinator.rss_bytes()
        for start in range(0, count, batch):
            requests = [
                task_pb.SubmitTaskRequest(role="nobody-serves-this", title=f"queued {i}")
                for i in range(start, min(count, start + batch))
            ]
            await stub.SubmitTasks(task_pb.SubmitTasksRequest(requests=requests), timeout=60)
        after = coordinator.rss_bytes()
    return (after - before) / count
