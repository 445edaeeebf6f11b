"""`make bench`: the coordinator's throughput, latency and memory, against the raw limit.

Everything is measured in one run on this machine and printed with its unit, then a
summary of target against measured. A missed target is reported (MISS), never turned
into a failing exit code: the figures depend on the machine and on whatever else it is
running (the load average is printed after every section for that reason). The exit
code is non-zero only when the benchmark itself breaks. Every child process is started
in its own process group and killed in ``finally``.

In order:

1. the raw limit (`bench.raw_grpc`): grpc.aio echo stream, unary ping-pong, concurrent
   unary calls and the memory of idle streams, between two processes with no
   coordinator, so that the coordinator's figures can be read as ratios of it;
2. the event store alone (`bench.store_bench`), on the same disk as the coordinator's;
   then the raw round-trip floor (`bench.raw_relay`): a lone RunTask's three processes,
   hops and durable commit with nothing else, the floor of the latency figures;
3. one `godel serve` (SQLite in a fresh data directory): RSS idle and with 1,000 idle
   agent links (`bench.idle_agents`), then with 4 `godel agent` processes running a
   no-op handler: throughput batched (SubmitTasks), one task per call (SubmitTask) and
   one task per message (SubmitTaskStream) (`bench.producer` processes submit; the
   benchmark keeps the clock), then round-trip latency;
4. the round trip again on ``--store memory://``, to separate durability from the rest;
5. memory per queued task; 6. the backpressure acceptance at full scale
   (`bench.backpressure`: 50,000 tasks per strategy into a queue of 10,000).

Completion is observed by polling ListTasks (see `bench.e2e.wait_drained`) rather than
by SubscribeEvents, because the subscription costs the coordinator one stream message
per finished task; ``--observer events`` measures with the subscription instead.
Memory is in MiB and KiB (2**20 and 2**10 bytes).

``python -m bench [--quick] [--observer poll|events]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import FrameType

import grpc
import psutil

from bench import backpressure, e2e, raw_grpc, raw_relay
from bench.procs import PYTHON, ROOT, Children, read_json_line
from bench.store_bench import bench_store
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.client import Client


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; `--quick` shrinks it for a smoke test."""

    batched_tasks: int = 20_000
    batch: int = 1_000
    batched_concurrency: int = 4
    single_tasks: int = 5_000
    single_producers: int = 2
    single_concurrency: int = 64
    stream_tasks: int = 20_000
    stream_producers: int = 2
    """Producer processes of the streamed run, one SubmitTaskStream each."""
    agents: int = 4
    capacity: int = 256
    latency_samples: int = 1_000
    """RunTask round trips timed: the p99 rests on its 10 slowest (of 300, on 3)."""
    latency_warmup: int = 50
    idle_agents: int = 1_000
    echo_messages: int = 15_000
    ping_samples: int = 2_000
    unary_calls: int = 8_000
    queued_tasks: int = 100_000
    backpressure_sent: int = 50_000
    backpressure_max_size: int = 10_000


QUICK = Sizes(
    batched_tasks=4_000,
    single_tasks=1_000,
    stream_tasks=2_000,
    latency_samples=100,
    latency_warmup=20,
    idle_agents=200,
    echo_messages=4_000,
    ping_samples=300,
    unary_calls=2_000,
    queued_tasks=10_000,
    backpressure_sent=5_000,
    backpressure_max_size=1_000,
)


@dataclass
class Target:
    """One row of the summary: a measured figure against its target."""

    name: str
    unit: str
    target: float
    measured: float
    higher_is_better: bool
    fmt: str = ",.0f"
    raw: float | None = None
    """The same measurement's raw limit in this run (no coordinator), where one exists:
    what no coordinator in this process model can beat."""

    @property
    def passed(self) -> bool:
        """Whether the figure met its target."""
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target


@dataclass
class Report:
    """What the run measured, printed as it goes and summarised at the end."""

    targets: list[Target] = field(default_factory=list)

    def figure(self, label: str, value: float, unit: str, fmt: str = ",.0f") -> None:
        """Prints one labelled figure with its unit."""
        print(f"  {label:<66} {value:>10{fmt}} {unit}", flush=True)

    def note(self, text: str) -> None:
        """Prints a line of context under the figures."""
        print(f"  {text}", flush=True)

    def target(
        self,
        name: str,
        unit: str,
        target: float,
        measured: float,
        *,
        higher: bool,
        fmt: str = ",.0f",
        raw: float | None = None,
    ) -> None:
        """Records a figure that has a target, for the summary; `fmt` formats all three,
        `raw` is the same measurement's raw limit in this run, if it has one."""
        self.targets.append(Target(name, unit, target, measured, higher, fmt, raw))


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` by the nearest-rank method (no interpolation)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def section(title: str) -> Callable[[], None]:
    """Prints a section heading; the returned callable prints how long it took and the
    1-minute load average, which shows when other work on the machine skewed a figure."""
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()

    def done() -> None:
        took = time.perf_counter() - started
        print(f"  ({took:.1f} s; load average {os.getloadavg()[0]:.2f})", flush=True)

    return done


def machine() -> None:
    """Prints what the figures were measured on, including the load from other work."""
    done = section("machine")
    cpu_model = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    print(f"  nproc (usable CPUs)   {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})")
    print(f"  cpu                   {cpu_model}")
    print(f"  memory                {psutil.virtual_memory().total / 2**30:.1f} GiB")
    print(f"  python                {platform.python_version()} ({sys.executable})")
    print(f"  platform              {platform.platform()}")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("grpcio", "protobuf"))
    print(f"  packages              {versions}")
    print(f"  load average          {_load()} (1, 5, 15 min; other work skews every figure)")
    done()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass(frozen=True)
class RawLimit:
    """The raw grpc.aio figures the coordinator's are divided by."""

    echo_rate: float
    """Echo stream messages per second."""
    ping_p50: float
    """Seconds of a sequential unary round trip, median."""
    unary_rate: float
    """Unary calls per second with the single-task producers' concurrency."""
    stream_ping_p50: float
    """Seconds of a sequential round trip on an open bidirectional stream, median."""
    echo_cpu: float
    """Server CPU seconds per echoed stream message (one in, one out)."""
    unary_cpu: float
    """Server CPU seconds per unary call with the single-task producers' concurrency."""
    stream_kb: float
    """Server RSS growth per idle open stream, KiB."""


async def raw_limit(children: Children, sizes: Sizes, report: Report) -> RawLimit:
    """Measures and prints the raw grpc.aio figures."""
    done = section("raw grpc.aio between two processes (bench/raw_grpc.py, 32-byte messages)")
    server = await children.start("raw-server", [PYTHON, "-m", "bench.raw_grpc"], pipes=True)
    try:
        port = (await read_json_line(server))["port"]
        server_process = psutil.Process(server.pid)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await raw_grpc.echo_rate(channel, max(1_000, sizes.echo_messages // 10))
            cpu = _cpu(server_process)
            # Best of three: this is a ceiling, and one run is at the mercy of whatever
            # else the two cores are doing at that moment.
            echoes = [await raw_grpc.echo_rate(channel, sizes.echo_messages) for _ in range(3)]
            echo = max(echoes)
            echo_cpu = (_cpu(server_process) - cpu) / (3 * sizes.echo_messages)
            await raw_grpc.ping_latencies(channel, 200)
            cpu = _cpu(server_process)
            pings = await raw_grpc.ping_latencies(channel, sizes.ping_samples)
            ping_cpu = (_cpu(server_process) - cpu) / sizes.ping_samples
            cpu = _cpu(server_process)
            unary = max(
                [
                    await raw_grpc.unary_rate(channel, sizes.unary_calls, sizes.single_concurrency)
                    for _ in range(2)
                ]
            )
            unary_cpu = (_cpu(server_process) - cpu) / (2 * sizes.unary_calls)
            await raw_grpc.stream_ping_latencies(channel, 200)
            stream_pings = await raw_grpc.stream_ping_latencies(channel, sizes.ping_samples)
        await asyncio.sleep(0.5)
        rss_before = server_process.memory_info().rss
        pool, _streams = await raw_grpc.open_idle_streams(
            f"127.0.0.1:{port}", sizes.idle_agents, channels=8
        )
        await asyncio.sleep(1.0)
        stream_kb = (server_process.memory_info().rss - rss_before) / sizes.idle_agents / 1024
        for idle_channel in pool:
            await idle_channel.close()
    finally:
        await children.stop(server)
    report.figure(
        f"bidi echo stream, {sizes.echo_messages:,} messages, one per stream message",
        echo,
        "msgs/s",
    )
    report.figure("  server CPU per echoed message (in and out)", echo_cpu * 1e6, "us/msg")
    ping_p50 = quantile(pings, 0.50)
    report.figure(
        f"unary ping-pong p50 ({sizes.ping_samples:,} sequential calls)",
        ping_p50 * 1e3,
        "ms",
        ".3f",
    )
    report.figure("unary ping-pong p99", quantile(pings, 0.99) * 1e3, "ms", ".3f")
    report.figure("  server CPU per unary call", ping_cpu * 1e6, "us/call")
    report.figure(
        f"unary calls, {sizes.single_concurrency} in flight from one client process, best of 2",
        unary,
        "calls/s",
    )
    report.figure("  server CPU per unary call", unary_cpu * 1e6, "us/call")
    stream_ping_p50 = quantile(stream_pings, 0.50)
    report.figure(
        f"bidi stream ping-pong p50 ({sizes.ping_samples:,} sequential, one open stream)",
        stream_ping_p50 * 1e3,
        "ms",
        ".3f",
    )
    report.figure(
        f"server RSS delta per idle open stream ({sizes.idle_agents:,} streams, 8 connections)",
        stream_kb,
        "KiB",
        ".1f",
    )
    done()
    return RawLimit(echo, ping_p50, unary, stream_ping_p50, echo_cpu, unary_cpu, stream_kb)


async def relay_floor(
    children: Children, directory: pathlib.Path, sizes: Sizes, report: Report
) -> raw_relay.RelayTrips:
    """Measures and prints the raw round trip through three processes (the floor)."""
    done = section(
        "raw round trip through three processes, no coordinator (bench/raw_relay.py): "
        "client -> relay -> worker stream -> relay -> client"
    )
    relay = await children.start(
        "raw-relay", [PYTHON, "-m", "bench.raw_relay", "serve", str(directory)], pipes=True
    )
    try:
        port = (await read_json_line(relay))["port"]
        worker = await children.start(
            "raw-worker", [PYTHON, "-m", "bench.raw_relay", "work", str(port)]
        )
        trips = await raw_relay.round_trips(
            f"127.0.0.1:{port}", sizes.latency_samples, sizes.latency_warmup
        )
        await children.stop(worker)
    finally:
        await children.stop(relay)
    ms = 1e3
    report.figure(
        f"unary call + worker hop + one durable commit, p50 ({sizes.latency_samples:,} "
        "sequential; a lone RunTask's path)",
        quantile(trips.durable, 0.5) * ms,
        "ms",
        ".3f",
    )
    report.figure("  the same, p99", quantile(trips.durable, 0.99) * ms, "ms", ".3f")
    report.figure(
        "unary call + worker hop, no commit, p50", quantile(trips.volatile, 0.5) * ms, "ms", ".3f"
    )
    report.figure(
        "open-stream message + worker hop + one durable commit, p50 (a lone streamed run)",
        quantile(trips.streamed, 0.5) * ms,
        "ms",
        ".3f",
    )
    report.figure("  the same, p99", quantile(trips.streamed, 0.99) * ms, "ms", ".3f")
    done()
    return trips


async def event_store(directory: pathlib.Path, report: Report) -> None:
    """bench.store_bench's figures, on the same disk as the coordinator's store."""
    done = section("event store alone (bench/store_bench.py, SQLite, synchronous=FULL)")
    labels = {
        "sequential_1": "appends of 1 event, one at a time (one fsync each)",
        "concurrent_1000x1": "appends of 1 event, 1,000 in flight (group commit)",
        "sequential_100": "appends of 100 events, one at a time (batched)",
        "concurrent_50x100": "appends of 100 events, 50 in flight",
    }
    results = await bench_store(directory)
    for name, rate in results.items():
        report.figure(f"{labels.get(name, name)} [{name}]", rate, "events/s")
    done()


async def coordinator_figures(
    children: Children,
    data_dir: pathlib.Path,
    sizes: Sizes,
    report: Report,
    observer: str,
    raw: RawLimit,
    relay: raw_relay.RelayTrips,
) -> None:
    """Memory, throughput and latency of one `godel serve` process.

    Args:
        relay: the raw three-process round trips, the floor of the RunTask figures.
    """
    done = section("coordinator process: godel serve, SQLite store in a fresh data dir")
    coordinator = await e2e.start_coordinator(children, str(data_dir))
    report.note(f"coordinator pid {coordinator.child.pid} at {coordinator.address}")
    done()

    done = section(f"coordinator memory with {sizes.idle_agents:,} idle agent links")
    fleet = await e2e.idle_fleet(children, coordinator, sizes.idle_agents)
    report.figure(
        "coordinator RSS idle (served one call, no agents)", fleet.rss_idle / 2**20, "MiB", ".1f"
    )
    report.figure(
        f"coordinator RSS with {fleet.agents:,} idle agents connected",
        fleet.rss_with_agents / 2**20,
        "MiB",
        ".1f",
    )
    report.figure("RSS delta per idle agent", fleet.per_agent_kb, "KiB", ".1f")
    report.figure(
        "links still READY after the settle time (heartbeats kept)", fleet.still_ready, ""
    )
    report.figure(
        f"time to connect {fleet.agents:,} agents (hello to welcome)",
        fleet.connect_seconds,
        "s",
        ".2f",
    )
    report.target(
        f"coordinator RSS, {fleet.agents:,} idle agents",
        "MiB",
        80,
        fleet.rss_with_agents / 2**20,
        higher=False,
        fmt=".1f",
    )
    report.target(
        "RSS per idle agent",
        "KiB",
        50,
        fleet.per_agent_kb,
        higher=False,
        fmt=".1f",
        raw=raw.stream_kb,
    )
    done()

    done = section(
        f"starting {sizes.agents} agent processes (capacity {sizes.capacity}, no-op handler)"
    )
    agents = await e2e.start_agents(children, coordinator, sizes.agents, sizes.capacity)
    done()

    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = task_grpc.TaskServiceStub(channel)
        counter: e2e.SucceededCounter | None = None
        if observer == "events":
            counter = e2e.SucceededCounter(channel)
            await counter.start()
        how = (
            "completion seen by one SubscribeEvents(types=[task.succeeded]) stream"
            if counter is not None
            else "completion seen by polling ListTasks(state=QUEUED/RUNNING, page_size=1) "
            f"every {e2e.POLL_INTERVAL * 1e3:.0f} ms after the last submit returned"
        )

        title = (
            f"throughput, batched: {sizes.batched_tasks:,} tasks, SubmitTasks of "
            f"{sizes.batch:,}, {sizes.batched_concurrency} calls in flight, 1 producer process"
        )
        done = section(title)
        batched = await e2e.throughput(
            children, coordinator, agents, stub,
            producers=1,
            tasks_per_producer=sizes.batched_tasks,
            batch=sizes.batch,
            concurrency=sizes.batched_concurrency,
            counter=counter,
        )  # fmt: skip
        _print_throughput(report, batched, how, per_call="SubmitTasks")
        report.target("throughput, batched", "tasks/s", 10_000, batched.rate, higher=True)
        done()

        per_producer = sizes.single_tasks // sizes.single_producers
        title = (
            f"throughput, one task per call: {per_producer * sizes.single_producers:,} "
            f"tasks, SubmitTask, {sizes.single_producers} producer processes x "
            f"{sizes.single_concurrency} calls in flight"
        )
        done = section(title)
        single = await e2e.throughput(
            children, coordinator, agents, stub,
            producers=sizes.single_producers,
            tasks_per_producer=per_producer,
            batch=1,
            concurrency=sizes.single_concurrency,
            counter=counter,
        )  # fmt: skip
        _print_throughput(report, single, how, per_call="SubmitTask")
        done()

        per_stream = sizes.stream_tasks // sizes.stream_producers
        title = (
            f"throughput, one task per message: {per_stream * sizes.stream_producers:,} "
            f"tasks, SubmitTaskStream, {sizes.stream_producers} producer processes x "
            "1 stream, each sending as fast as flow control lets it"
        )
        done = section(title)
        streamed = await e2e.throughput(
            children, coordinator, agents, stub,
            producers=sizes.stream_producers,
            tasks_per_producer=per_stream,
            batch=1,
            concurrency=1,
            counter=counter,
            stream=True,
        )  # fmt: skip
        backlog = "streamed task (sent -> answered; all sent at once, so this is the backlog)"
        _print_throughput(report, streamed, how, per_call=backlog)
        report.target(
            "throughput, one task per message",
            "tasks/s",
            2_500,
            streamed.rate,
            higher=True,
            raw=1 / (2 * raw.echo_cpu),  # the one-per-message ceiling (see the ratios)
        )
        done()

        if counter is not None:
            await counter.close()

    done = section(
        f"round trip at low load: {sizes.latency_samples} tasks one at a time "
        f"(after {sizes.latency_warmup} warm-up): client.tasks.run, RunTask, submit then wait"
    )
    trips = await e2e.round_trips(coordinator.address, sizes.latency_samples, sizes.latency_warmup)
    _print_round_trips(report, trips)
    p50 = quantile(trips.run, 0.50)
    report.target(
        "round trip p50 (client.tasks.run)",
        "ms",
        1.0,
        p50 * 1e3,
        higher=False,
        fmt=".2f",
        raw=quantile(relay.streamed, 0.5) * 1e3,
    )
    p99 = quantile(trips.run, 0.99)
    report.target(
        "round trip p99 (client.tasks.run)",
        "ms",
        3.0,
        p99 * 1e3,
        higher=False,
        fmt=".2f",
        raw=quantile(relay.streamed, 0.99) * 1e3,
    )
    rss_end = coordinator.rss_bytes()
    done()

    # The same round trip without the disk, to tell the cost of durability from the
    # cost of the RPCs and the agent hop. Not a target: `godel serve` defaults to SQLite.
    for agent in agents:
        await children.stop(agent)
    await children.stop(coordinator.child)
    done = section(
        "the same round trip on a coordinator with --store memory:// (no fsync; for attribution)"
    )
    in_memory = await e2e.start_coordinator(
        children, str(data_dir) + "-memory", "--store", "memory://", name="coordinator-memory"
    )
    await e2e.start_agents(children, in_memory, sizes.agents, sizes.capacity)
    memory_trips = await e2e.round_trips(
        in_memory.address, sizes.latency_samples, sizes.latency_warmup
    )
    _print_round_trips(report, memory_trips)
    done()

    done = section("ratios to the raw limit")
    report.figure(
        "one-per-message (stream) tasks/s / raw echo msgs/s",
        streamed.rate / raw.echo_rate,
        "",
        ".3f",
    )
    report.figure(
        "one-per-call (SubmitTask) tasks/s / raw unary calls/s",
        single.rate / raw.unary_rate,
        "",
        ".3f",
    )
    report.figure("batched tasks/s / raw echo msgs/s", batched.rate / raw.echo_rate, "", ".3f")
    report.figure(
        "client.tasks.run p50 / raw stream ping-pong p50", p50 / raw.stream_ping_p50, "", ".2f"
    )
    report.figure(
        "client.tasks.run p50, memory store / raw stream ping-pong p50",
        quantile(memory_trips.run, 0.5) / raw.stream_ping_p50,
        "",
        ".2f",
    )
    report.figure(
        "GetTask p50 / raw ping-pong p50", quantile(trips.get, 0.5) / raw.ping_p50, "", ".2f"
    )
    # What no coordinator in this process model can beat, measured in this run: the same
    # three processes and hops as a lone run, the same durable commit before the answer,
    # and nothing else (bench/raw_relay.py).
    floor = quantile(relay.streamed, 0.5)
    report.figure(
        "round-trip floor: raw relay p50 (stream message, worker hop, one durable commit)",
        floor * 1e3,
        "ms",
        ".3f",
    )
    report.figure("client.tasks.run p50 / that floor", p50 / floor, "", ".2f")
    report.figure(
        "client.tasks.run p99 / raw relay p99", p99 / quantile(relay.streamed, 0.99), "", ".2f"
    )
    report.figure(
        "RunTask call p50 / raw relay p50 (unary call, worker hop, one durable commit)",
        quantile(trips.run_call, 0.5) / quantile(relay.durable, 0.5),
        "",
        ".2f",
    )
    report.figure(
        "RunTask call p50, memory store / raw relay p50 (unary, no commit)",
        quantile(memory_trips.run_call, 0.5) / quantile(relay.volatile, 0.5),
        "",
        ".2f",
    )
    ceiling = 1 / (raw.unary_cpu + raw.echo_cpu)
    report.figure(
        "one-per-call ceiling: one core / (raw CPU per unary call + per echoed message)",
        ceiling,
        "tasks/s",
    )
    report.figure("one-per-call tasks/s / that ceiling", single.rate / ceiling, "", ".3f")
    stream_ceiling = 1 / (2 * raw.echo_cpu)
    report.figure(
        "one-per-message ceiling: one core / (raw CPU of two echoed messages: task in and "
        "lease out, result in and answer out)",
        stream_ceiling,
        "tasks/s",
    )
    report.figure(
        "one-per-message tasks/s / that ceiling", streamed.rate / stream_ceiling, "", ".3f"
    )
    report.figure(
        "coordinator RSS after all runs (every task is kept in memory)",
        rss_end / 2**20,
        "MiB",
        ".1f",
    )
    done()


def _print_round_trips(report: Report, trips: e2e.RoundTrips) -> None:
    watch = [total - submit for total, submit in zip(trips.total, trips.submit, strict=True)]
    ms = 1e3
    report.figure(
        "client.tasks.run (RunTaskStream: run, answer when durable), p50",
        quantile(trips.run, 0.5) * ms,
        "ms",
        ".3f",
    )
    report.figure("client.tasks.run, p99", quantile(trips.run, 0.99) * ms, "ms", ".3f")
    report.figure(
        "  the same as one RunTask call (unary), p50",
        quantile(trips.run_call, 0.5) * ms,
        "ms",
        ".3f",
    )
    report.figure(
        "  the same as one RunTask call, p99", quantile(trips.run_call, 0.99) * ms, "ms", ".3f"
    )
    report.figure("submit -> result visible, p50", quantile(trips.total, 0.5) * ms, "ms", ".3f")
    report.figure("submit -> result visible, p99", quantile(trips.total, 0.99) * ms, "ms", ".3f")
    report.figure(
        "  SubmitTask call (answered once durable), p50",
        quantile(trips.submit, 0.5) * ms,
        "ms",
        ".3f",
    )
    report.figure("  then WatchTask until terminal, p50", quantile(watch, 0.5) * ms, "ms", ".3f")
    report.figure(
        "  tasks already finished when the watch opened",
        trips.done_before_watch / len(trips.total) * 100,
        "%",
    )
    report.figure(
        "GetTask round trip (no disk, no agent), p50", quantile(trips.get, 0.5) * ms, "ms", ".3f"
    )


def _print_throughput(report: Report, run: e2e.Throughput, how: str, per_call: str) -> None:
    report.figure("throughput, first submit -> last result observed", run.rate, "tasks/s")
    report.figure("elapsed", run.seconds, "s", ".2f")
    report.figure(
        "submit phase (until the last submit call returned)", run.submit_seconds, "s", ".2f"
    )
    report.figure(
        f"{per_call} call latency under load, p50 (worst producer)", run.call_p50_ms, "ms", ".1f"
    )
    report.figure(
        f"{per_call} call latency under load, p99 (worst producer)", run.call_p99_ms, "ms", ".1f"
    )
    report.figure(
        "coordinator CPU per task (user+sys, all threads)",
        run.coordinator_cpu / run.tasks * 1e6,
        "us/task",
    )
    report.figure(
        "coordinator CPU use during the run", run.coordinator_cpu / run.seconds * 100, "% of a core"
    )
    report.figure(
        "agents' CPU per task (all agent processes)", run.agents_cpu / run.tasks * 1e6, "us/task"
    )
    report.figure(
        "producers' CPU per task (while submitting)", run.producers_cpu / run.tasks * 1e6, "us/task"
    )
    busy = run.coordinator_cpu + run.agents_cpu + run.producers_cpu
    report.figure(
        "CPU of all these processes during the run", busy / run.seconds * 100, "% of a core"
    )
    report.figure("tasks that failed (should be 0)", run.failed, "tasks")
    commits = run.metrics.get("godel_event_store_append_seconds_count", 0.0)
    if commits:
        events = run.metrics.get("godel_event_store_batch_events_sum", 0.0)
        seconds = run.metrics.get("godel_event_store_append_seconds_sum", 0.0)
        report.figure("event store commits during the run (coordinator metrics)", commits, "")
        report.figure("  events per commit, mean", events / commits, "", ",.1f")
        report.figure("  commit time, mean (fsync included)", seconds / commits * 1e3, "ms", ".2f")
    leased = run.metrics.get("godel_dispatch_latency_seconds_count", 0.0)
    if leased:
        wait = run.metrics.get("godel_dispatch_latency_seconds_sum", 0.0) / leased
        report.figure(
            "time queued before lease, mean (coordinator metrics)", wait * 1e3, "ms", ".1f"
        )
    report.note(how)


async def queued_figures(
    children: Children, data_dir: pathlib.Path, sizes: Sizes, report: Report
) -> None:
    """Memory per queued task, on a fresh coordinator so nothing else is in the figure."""
    done = section(f"coordinator memory with {sizes.queued_tasks:,} queued tasks (no agent)")
    coordinator = await e2e.start_coordinator(children, str(data_dir), name="coordinator-queued")
    per_task = await e2e.queued_memory(coordinator, sizes.queued_tasks)
    report.figure("RSS per queued task (title only, no payload)", per_task, "bytes", ".0f")
    report.target("memory per queued task", "bytes", 1024, per_task, higher=False, fmt=".0f")
    await children.stop(coordinator.child)
    done()


async def backpressure_runs(
    children: Children, data_dir: pathlib.Path, sizes: Sizes, report: Report
) -> None:
    """The issue's backpressure acceptance at full scale (`bench.backpressure`): one
    fresh coordinator and two slow agents, the four strategies in turn."""
    done = section(
        f"backpressure: {sizes.backpressure_sent:,} tasks streamed into a queue of "
        f"{sizes.backpressure_max_size:,}, per strategy"
    )
    coordinator = await e2e.start_coordinator(children, str(data_dir), name="coordinator-bp")
    agents = []
    for index in range(2):
        agent = await children.start(
            f"drain-{index}",
            [
                PYTHON, "-m", "godel_grpc.cli", "agent",
                "--coordinator", coordinator.address,
                "--role", backpressure.AGENT_ROLE, "--name", f"drain-{index}",
                *backpressure.agent_args(),
            ],
        )  # fmt: skip
        agents.append(agent)
    async with Client(coordinator.address, timeout=60) as client:
        await backpressure.wait_agents(client, 2)
        results = await backpressure.run_all(
            client,
            backpressure.scenarios(sizes.backpressure_sent, sizes.backpressure_max_size),
            say=report.note,
        )
    for result in results:
        name = result.scenario.strategy
        report.figure(f"{name}: EnqueueStream acks per second", result.stream_acks_per_second, "/s")
        report.target(f"backpressure {name}: problems", "", 0, len(result.problems), higher=False)
        # Informational: how long a run takes depends on how slow the draining agents
        # are made (they must be slower than the producer for the queue to fill).
        report.figure(
            f"{name}: stream + drain", result.stream_seconds + result.drain_seconds, "s", ".1f"
        )
    # Agents first: stopped after their coordinator, they would log its loss as a warning.
    for agent in agents:
        await children.stop(agent)
    await children.stop(coordinator.child)
    done()


def summary(report: Report) -> None:
    """The final table: target, measured, PASS or MISS."""
    print("\n== summary (targets are for this 2-core machine)")
    header = (
        f"  {'measurement':<40} {'target':>18} {'measured':>18}  result  "
        f"{'raw limit, this run':>19}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in report.targets:
        sign = ">=" if row.higher_is_better else "<="
        target = f"{sign} {row.target:{row.fmt}} {row.unit}"
        measured = f"{row.measured:{row.fmt}} {row.unit}"
        verdict = "PASS" if row.passed else "MISS"
        raw = f"{row.raw:{row.fmt}} {row.unit}" if row.raw is not None else ""
        print(f"  {row.name:<40} {target:>18} {measured:>18}  {verdict}    {raw:>19}")
    passed = sum(row.passed for row in report.targets)
    print(f"  {passed} of {len(report.targets)} targets met; load average now {_load()}")


async def run(sizes: Sizes, observer: str) -> None:
    """Every measurement in order; children are killed whatever happens."""
    report = Report()
    started = time.perf_counter()
    machine()
    # On the repository's disk (.godel/ is git-ignored), not in /tmp, which may be a
    # tmpfs where fsync is free and the durable figures would flatter.
    scratch_root = ROOT / ".godel"
    scratch_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=scratch_root) as scratch:
        scratch_dir = pathlib.Path(scratch)
        (scratch_dir / "logs").mkdir()
        (scratch_dir / "store").mkdir()
        children = Children(scratch_dir / "logs")
        try:
            raw = await raw_limit(children, sizes, report)
            await event_store(scratch_dir / "store", report)
            (scratch_dir / "relay").mkdir()
            relay = await relay_floor(children, scratch_dir / "relay", sizes, report)
            await coordinator_figures(
                children, scratch_dir / "data", sizes, report, observer, raw, relay
            )
            await queued_figures(children, scratch_dir / "queued", sizes, report)
            await backpressure_runs(children, scratch_dir / "backpressure", sizes, report)
        except BaseException:
            _dump_logs(scratch_dir / "logs")
            raise
        finally:
            await children.kill_all()
        _log_health(scratch_dir / "logs")
    summary(report)
    print(f"  benchmark took {time.perf_counter() - started:.0f} s")


def _log_health(directory: pathlib.Path) -> None:
    """Counts warnings and errors the children logged: a fast figure from a process that
    logged errors is not a figure to trust, and a bug shows up here first."""
    done = section("warnings and errors logged by the child processes")
    found: dict[tuple[str, str, str], int] = {}
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if line.strip():
                    key = (path.stem, "unparsed", line.strip()[:100])
                    found[key] = found.get(key, 0) + 1
                continue
            level = str(record.get("level", "")) if isinstance(record, dict) else ""
            if level in {"warning", "error", "critical"}:
                key = (path.stem.rstrip("0123456789-") or path.stem, level, str(record["message"]))
                found[key] = found.get(key, 0) + 1
    if not found:
        print("  none")
    for (name, level, message), count in sorted(found.items()):
        print(f"  {name}: {count} x {level}: {message[:100]}")
    done()


def _dump_logs(directory: pathlib.Path) -> None:
    """On failure, the tail of every child's log, since the temp dir is about to go."""
    for path in sorted(directory.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if '"level": "error"' in line or "Traceback" in line]
        if errors or lines:
            print(f"--- {path.name} (last lines)", file=sys.stderr)
            for line in errors[-10:] or lines[-3:]:
                print(f"    {line}", file=sys.stderr)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising here unwinds through every `finally`, which is what kills the children.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    """Runs the benchmark; 0 unless the benchmark itself broke."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument(
        "--observer",
        choices=["poll", "events"],
        default="poll",
        help="how task completion is observed (default: poll, the cheaper for the coordinator)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        asyncio.run(run(QUICK if args.quick else Sizes(), args.observer))
    except KeyboardInterrupt:
        print("\nbenchmark interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("\nthe benchmark broke (not a missed target); see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
