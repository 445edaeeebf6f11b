"""The backpressure acceptance run: a producer streams tasks into a bounded queue that
slow agents drain, and everything the issue promises is checked on the way.

One `Scenario` per strategy (shed-load, reject, block, drop-oldest). The producer sends
`sent` tasks through one `EnqueueStream` (priorities cycle low, normal, high,
critical; the last fifth are all critical, so that even critical tasks meet a full
queue); agents that named the queue in their hello drain it. Then `run_scenario`
checks, and lists as `problems` whatever does not hold:

- depth never exceeds maxSize (every ack carries the depth after its decision);
- pressure turns on at the high watermark and off only below the low one: an ack with
  pressure off never shows a depth at or above the high mark, one with pressure on never
  a depth below the low mark, and pressure goes from off to on only at the high mark;
- every task is accounted for: completed + shed + rejected = sent, in GetQueue's
  counters, per priority too, and the acks agree with the counters;
- every evicted task has a ``task.cancelled`` event with code SHED and a reason;
- shed-load evicts the lowest priority, oldest first, and sheds a newcomer only when
  nothing of lower priority is queued (so no critical task is shed while a lower one
  waits); drop-oldest evicts the oldest. Both are checked by replaying the event log;
- block: the producer is held (the queue reports a waiting producer) and resumes with
  every task accepted; another producer with a 0.3 s deadline gets DEADLINE_EXCEEDED.

`make bench` runs it at the issue's scale (50,000 tasks, maxSize 10,000) and prints the
figures; `tests/integration/test_backpressure_soak.py` runs the same code at a smaller
scale with the same assertions. ``python -m bench.backpressure [--sent N --max-size M]``
runs it alone against a fresh coordinator and agents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from godel_grpc._proto.godel.v1 import queue_pb2
from godel_grpc._proto.godel.v1 import queue_service_pb2 as queue_pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as queue_grpc
from godel_grpc.client import Client, RPCError

Ack = queue_pb.EnqueueStreamResponse
PRIORITIES = ("low", "normal", "high", "critical")
RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
STRATEGIES = ("shed-load", "reject", "block", "drop-oldest")
AGENT_ROLE = "drain"
WATCHED = ["task.submitted", "task.leased", "task.succeeded", "task.cancelled"]


def queue_name(strategy: str) -> str:
    return f"bp-{strategy}"


def agent_args(capacity: int = 4) -> list[str]:
    """`godel agent` arguments of a slow drainer (`bench.handlers.pause`) of every
    scenario's queue."""
    queues = [arg for s in STRATEGIES for arg in ("--queue", queue_name(s))]
    return ["--capacity", str(capacity), "--handler", "bench.handlers:pause", *queues]


def priority_of(index: int, sent: int) -> str:
    """Mixed priorities, then a final fifth of critical tasks."""
    return "critical" if index >= sent * 4 // 5 else PRIORITIES[index % 4]


@dataclass(frozen=True)
class Scenario:
    """One strategy's run: `sent` tasks into a queue of `max_size`."""

    strategy: str
    sent: int
    max_size: int
    high: float = 0.8
    low: float = 0.3


@dataclass
class Result:
    """What a run did and what did not hold."""

    scenario: Scenario
    stream_seconds: float = 0.0
    drain_seconds: float = 0.0
    check_seconds: float = 0.0
    acks: Counter[str] = field(default_factory=Counter)
    counts: queue_pb2.QueueCounts = field(default_factory=queue_pb2.QueueCounts)
    max_depth: int = 0
    pressure_changes: int = 0
    evicted: int = 0
    deadline_exceeded: bool = False
    producer_waited: bool = False
    last_event_id: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        return self.counts.completed + self.counts.shed + self.counts.rejected

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.scenario.strategy}: sent {self.total_sent:,}; completed {c.completed:,} "
            f"+ shed {c.shed:,} + rejected {c.rejected:,} = {self.accounted:,}; "
            f"max depth {self.max_depth:,}/{self.scenario.max_size:,}; "
            f"{self.pressure_changes} pressure changes; stream {self.stream_seconds:.1f} s "
            f"({self.scenario.sent / max(self.stream_seconds, 1e-9):,.0f} acks/s), "
            f"drain {self.drain_seconds:.1f} s, checks {self.check_seconds:.1f} s"
        )

    @property
    def stream_acks_per_second(self) -> float:
        return self.scenario.sent / max(self.stream_seconds, 1e-9)

    @property
    def total_sent(self) -> int:
        """The stream's tasks, plus the short-deadline one of "block"."""
        return self.scenario.sent + (1 if self.scenario.strategy == "block" else 0)


async def run_scenario(
    client: Client, scenario: Scenario, after_event_id: int = 0, timeout: float = 120.0
) -> Result:
    """Runs one scenario against a coordinator whose agents drain its queue."""
    result = Result(scenario)
    queue = await client.queues.create(
        name=queue_name(scenario.strategy),
        backpressure={
            "strategy": scenario.strategy,
            "maxSize": scenario.max_size,
            "highWatermark": scenario.high,
            "lowWatermark": scenario.low,
        },
    )
    requests = [
        queue_pb.EnqueueStreamRequest(
            queue_id=queue.id, sequence=i + 1, priority=priority_of(i, scenario.sent)
        )
        for i in range(scenario.sent)
    ]
    acks: list[Ack] = []
    side = None
    if scenario.strategy == "block":
        side = asyncio.create_task(_impatient_producer(client, queue.id, result))
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(client.address) as channel:
        stub = queue_grpc.QueueServiceStub(channel)

        async def produce() -> AsyncIterator[queue_pb.EnqueueStreamRequest]:
            for request in requests:
                yield request

        async for ack in stub.EnqueueStream(produce(), timeout=timeout):
            acks.append(ack)
    result.stream_seconds = time.perf_counter() - started
    if side is not None:
        if not result.producer_waited:  # the stream ended without ever being held
            side.cancel()
            result.problems.append("block: the producer was never held")
        with contextlib.suppress(asyncio.CancelledError):
            await side
    started = time.perf_counter()
    final = await _drained(client, queue.id, timeout)
    result.drain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result.counts = final.counts
    _check_acks(scenario, requests, acks, result)
    _check_counts(final, acks, result)
    await _check_events(client, scenario, queue.name, requests, acks, after_event_id, result)
    result.check_seconds = time.perf_counter() - started
    return result


async def _impatient_producer(client: Client, queue_id: str, result: Result) -> None:
    """Once the stream is held by the full "block" queue, a second producer with a
    0.3 s deadline must get DEADLINE_EXCEEDED."""
    while True:  # cancelled if the stream ends first
        if (await client.queues.get(queue_id)).waiting_producers >= 1:
            break
        await asyncio.sleep(0.01)
    result.producer_waited = True
    try:
        await client.queues.enqueue(queue_id, priority="critical", call_timeout=0.3)
    except RPCError as error:
        result.deadline_exceeded = error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        if not result.deadline_exceeded:
            result.problems.append(f"block: the impatient producer got {error.code.name}")
        return
    result.problems.append("block: the impatient producer was accepted by a full queue")


async def _drained(client: Client, queue_id: str, timeout: float) -> queue_pb2.Queue:
    deadline = time.monotonic() + timeout
    while True:
        queue = await client.queues.get(queue_id)
        if queue.depth == 0 and queue.in_flight == 0:
            return queue
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue {queue.name} did not drain: {queue}")
        await asyncio.sleep(0.05)


def _check_acks(
    scenario: Scenario, requests: Sequence[queue_pb.EnqueueStreamRequest], acks: list[Ack],
    result: Result,
) -> None:  # fmt: skip
    problems = result.problems
    name = scenario.strategy
    if [a.sequence for a in acks] != [r.sequence for r in requests]:
        problems.append(f"{name}: acks are not one per request, in order")
    high = scenario.high * scenario.max_size
    low = scenario.low * scenario.max_size
    pressure = False
    for ack in acks:
        result.acks[Ack.Outcome.Name(ack.outcome)] += 1
        result.max_depth = max(result.max_depth, ack.depth)
        if ack.depth > scenario.max_size:
            problems.append(f"{name}: depth {ack.depth} above maxSize at #{ack.sequence}")
        if not ack.pressure and ack.depth >= high:
            problems.append(f"{name}: pressure off at depth {ack.depth} (#{ack.sequence})")
        if ack.pressure and ack.depth < low:
            problems.append(f"{name}: pressure on at depth {ack.depth} (#{ack.sequence})")
        if ack.pressure and not pressure and ack.depth < high:
            problems.append(f"{name}: pressure turned on at depth {ack.depth} (#{ack.sequence})")
        if ack.pressure != pressure:
            result.pressure_changes += 1
            pressure = ack.pressure
        if ack.outcome in (Ack.OUTCOME_SHED, Ack.OUTCOME_REJECTED):
            if ack.retry_after.ToNanoseconds() <= 0:
                problems.append(f"{name}: refusal #{ack.sequence} without a retry delay")
        elif ack.outcome != Ack.OUTCOME_ACCEPTED:
            problems.append(f"{name}: ack #{ack.sequence} is {Ack.Outcome.Name(ack.outcome)}")
    if result.pressure_changes == 0:
        problems.append(f"{name}: pressure never turned on: the agents were not slow enough")
    if name == "block" and result.acks["OUTCOME_ACCEPTED"] != scenario.sent:
        problems.append(f"block: the held producer did not resume: {dict(result.acks)}")
    if name == "block" and not result.deadline_exceeded:
        problems.append("block: no DEADLINE_EXCEEDED for the impatient producer")


def _check_counts(queue: queue_pb2.Queue, acks: list[Ack], result: Result) -> None:
    problems, counts = result.problems, queue.counts
    name = result.scenario.strategy
    if result.accounted != result.total_sent:
        problems.append(f"{name}: {result.accounted} accounted for, {result.total_sent} sent")
    if counts.failed:
        problems.append(f"{name}: {counts.failed} tasks failed")
    accepted = sum(a.outcome == Ack.OUTCOME_ACCEPTED for a in acks)
    if counts.accepted != accepted:
        problems.append(f"{name}: {counts.accepted} accepted counted, {accepted} acked")
    newcomers_shed = sum(a.outcome == Ack.OUTCOME_SHED for a in acks)
    result.evicted = counts.shed - newcomers_shed
    if result.evicted != accepted - counts.completed:
        problems.append(f"{name}: {result.evicted} evicted but {accepted - counts.completed} lost")
    rejected = sum(a.outcome == Ack.OUTCOME_REJECTED for a in acks) + (name == "block")
    if counts.rejected != rejected:
        problems.append(f"{name}: {counts.rejected} rejected counted, {rejected} refused")
    for attribute in ("accepted", "shed", "rejected", "completed"):
        by_priority = sum(getattr(c, attribute) for c in queue.priority_counts.values())
        if by_priority != getattr(counts, attribute):
            problems.append(f"{name}: {attribute} by priority does not add up")
    if name == "shed-load" and not counts.shed:
        problems.append("shed-load: nothing was shed")
    if name == "reject" and not counts.rejected:
        problems.append("reject: nothing was rejected")


async def _check_events(
    client: Client, scenario: Scenario, queue: str,
    requests: Sequence[queue_pb.EnqueueStreamRequest], acks: list[Ack],
    after_event_id: int, result: Result,
) -> None:  # fmt: skip
    """Replays the queue's task events in log order; see the module docstring."""
    problems, name = result.problems, scenario.strategy
    accepted = {a.task_id: requests[a.sequence - 1].priority for a in acks if a.task_id}
    queued: dict[str, int] = {}  # task id -> rank, in submission order
    victims: list[int] = []  # ranks of SHED cancellations just before a submission
    min_rank_before: dict[str, int] = {}  # task id -> lowest rank queued before its batch
    ended = 0
    async for response in client.events.subscribe(after_id=after_event_id, types=WATCHED):
        event = response.event
        result.last_event_id = event.id
        kind = event.WhichOneof("payload")
        if kind == "task_submitted":
            task = event.task_submitted.task
            if task.queue != queue:
                continue
            ranks = [*queued.values(), *victims]
            min_rank_before[task.id] = min(ranks) if ranks else len(PRIORITIES)
            queued[task.id] = RANK[task.priority or "normal"]
        elif kind == "task_cancelled" and event.task_cancelled.task_id in accepted:
            cancelled = event.task_cancelled
            if cancelled.code != "SHED" or not cancelled.reason:
                problems.append(f"{name}: {cancelled.task_id} cancelled without a SHED reason")
            rank = queued.get(cancelled.task_id)
            if rank is None:
                problems.append(f"{name}: {cancelled.task_id} evicted while not queued")
            elif name == "shed-load" and rank != min(queued.values()):
                problems.append(f"{name}: evicted a {PRIORITIES[rank]} task before a lower one")
            elif name == "drop-oldest" and cancelled.task_id != next(iter(queued)):
                problems.append(f"{name}: evicted {cancelled.task_id}, not the oldest")
            if rank is not None:
                victims.append(rank)
            queued.pop(cancelled.task_id, None)
            ended += 1
        else:
            task_id = event.task_leased.task_id or event.task_succeeded.task_id
            if task_id in accepted:
                queued.pop(task_id, None)
                ended += kind == "task_succeeded"
        if kind != "task_cancelled":
            victims.clear()
        if ended == len(accepted):
            break
    if name != "shed-load":
        return
    # A newcomer shed at #k: nothing lower may have been queued. Between its decision
    # and the next accepted offer's batch, tasks only leave the queue, so what was
    # queued just before that batch was queued at the decision too.
    following = ""
    for ack in reversed(acks):
        if ack.task_id:
            following = ack.task_id
        elif ack.outcome == Ack.OUTCOME_SHED and following:
            rank = RANK[requests[ack.sequence - 1].priority]
            if min_rank_before[following] < rank:
                problems.append(f"shed-load: #{ack.sequence} shed while a lower task waited")


# -- running it alone or from `make bench` ------------------------------------------------


async def run_all(
    client: Client, scenarios: Sequence[Scenario], say: Callable[[str], None] = print
) -> list[Result]:
    """Runs the scenarios one after the other on one coordinator."""
    results: list[Result] = []
    after = 0
    for scenario in scenarios:
        result = await run_scenario(client, scenario, after)
        after = result.last_event_id
        say("  " + result.summary())
        for problem in result.problems[:10]:
            say(f"    PROBLEM {problem}")
        results.append(result)
    return results


def scenarios(sent: int, max_size: int) -> list[Scenario]:
    return [Scenario(strategy, sent, max_size) for strategy in STRATEGIES]


async def _main(sent: int, max_size: int, agents: int) -> int:
    from bench.e2e import start_coordinator
    from bench.procs import PYTHON, Children

    with tempfile.TemporaryDirectory(prefix="bench-bp-") as scratch:
        directory = pathlib.Path(scratch)
        children = Children(directory)
        try:
            coordinator = await start_coordinator(children, str(directory / "data"))
            for index in range(agents):
                await children.start(
                    f"drain-{index}",
                    [
                        PYTHON, "-m", "godel_grpc.cli", "agent",
                        "--coordinator", coordinator.address,
                        "--role", AGENT_ROLE, "--name", f"drain-{index}",
                        *agent_args(),
                    ],
                )  # fmt: skip
            async with Client(coordinator.address, timeout=60) as client:
                await wait_agents(client, agents)
                results = await run_all(client, scenarios(sent, max_size))
        finally:
            await children.kill_all()
    return int(any(r.problems for r in results))


async def wait_agents(client: Client, count: int) -> None:
    deadline = time.monotonic() + 30
    while sum(a.state == a.STATE_READY for a in await client.agents.list(AGENT_ROLE)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} drain agents did not connect")
        await asyncio.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sent", type=int, default=50_000)
    parser.add_argument("--max-size", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=2)
    args = parser.parse_args()
    return asyncio.run(_main(args.sent, args.max_size, args.agents))


if __name__ == "__main__":
    sys.exit(main())
