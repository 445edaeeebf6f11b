"""The seed's bulkhead (section 9): `service-isolation`, with partitions auth, billing
and analytics, so that a failure in one partition does not affect the others.

Agents join a partition in their hello (``godel agent --partition
service-isolation/auth``); the script starts one for auth (quick work) and one for
analytics, whose upstream is down (each task hangs half a second, then fails). It
floods analytics with 15 tasks: 10 fit (`maxTasks`), 5 are refused with
RESOURCE_EXHAUSTED naming the partition. Meanwhile 20 auth tasks all complete, at
their usual pace. After five failures the analytics agent's circuit breaker (on by
default) opens, and the rest of its tasks wait rather than fail. GetBulkhead shows
each partition's agents and counters. Needs a coordinator; run from the repository
root (the agents use the demo's handlers):

    godel serve &
    python examples/bulkheads.py --coordinator 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import grpc

from godel_grpc._proto.godel.v1 import bulkhead_pb2, task_pb2
from godel_grpc.client import Client, RPCError

SERVICE_ISOLATION = {
    "name": "service-isolation",
    "partitions": [
        {"name": "auth", "maxAgents": 5, "maxTasks": 20},
        {"name": "billing", "maxAgents": 5, "maxTasks": 20},
        {"name": "analytics", "maxAgents": 3, "maxTasks": 10},
    ],
}
HANDLERS = "godel_grpc.demo.handlers"
AGENTS = [
    ("auth-1", "auth", "review"),
    ("analytics-1", "analytics", "broken"),
]
"""(name, partition, handler) of the agents the script starts."""


def agent_arguments(address: str) -> list[list[str]]:
    """`godel agent` arguments (after ``agent``) of each partition's agent."""
    return [
        [
            "--coordinator", address, "--role", partition, "--name", name, "--capacity", "3",
            "--partition", f"service-isolation/{partition}",
            "--handler", f"{HANDLERS}:{handler}",
        ]
        for name, partition, handler in AGENTS
    ]  # fmt: skip


def _row(partition: bulkhead_pb2.BulkheadPartition) -> str:
    return (
        f"    {partition.name:<10} agents {partition.agents}/{partition.max_agents}  "
        f"queued {partition.queued:>2}  running {partition.running}  completed "
        f"{partition.completed:>2}  failed {partition.failed:>2}  rejected {partition.rejected}"
    )


async def run(
    client: Client,
    start_agents: Callable[[Sequence[Sequence[str]]], None],
    say: Callable[[str], None] = print,
) -> bulkhead_pb2.Bulkhead:
    """Runs the story above; `start_agents` starts `godel agent` with each argument
    list. Returns the bulkhead as it ended (then deletes it)."""
    bulkhead = await client.bulkheads.create(SERVICE_ISOLATION)
    say(f"created {bulkhead.name} ({bulkhead.id}) with partitions:")
    for partition in bulkhead.partitions:
        limits = f"maxAgents {partition.max_agents}  maxTasks {partition.max_tasks}"
        say(f"    {partition.name:<10} {limits}")
    try:
        start_agents(agent_arguments(client.address))
        await _joined(client, bulkhead.id)
        say("agents joined: " + ", ".join(f"{n} → {p}" for n, p, _ in AGENTS))
        admitted: list[task_pb2.Task] = []
        refused: list[RPCError] = []
        for i in range(15):
            try:
                admitted.append(
                    await client.bulkheads.submit(
                        bulkhead.id, "analytics", title=f"report #{i}", max_attempts=1
                    )
                )
            except RPCError as error:
                if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                refused.append(error)
        say(f"flooded analytics with 15 tasks: {len(admitted)} admitted, {len(refused)} refused")
        if refused:
            say(f"    {refused[0].code.name}: {refused[0].message}")
        started = time.perf_counter()
        logins = [
            await client.bulkheads.submit(
                bulkhead.id, "auth", title=f"login #{i}", payload={"user": i}
            )
            for i in range(20)
        ]
        done = await asyncio.gather(*(client.tasks.wait(t.id, timeout=60) for t in logins))
        ok = sum(t.state == task_pb2.Task.STATE_SUCCEEDED for t in done)
        seconds = time.perf_counter() - started
        say(f"auth meanwhile: {ok} of {len(logins)} logins succeeded in {seconds:.2f} s")
        shown = await _analytics_tripped(client, bulkhead.id)
        analytics = next(p for p in shown.partitions if p.name == "analytics")
        circuit = await client.agents.get_circuit_state(analytics.agent_ids[0])
        say(
            f"analytics: {analytics.failed} tasks failed upstream; then its agent's circuit "
            f"breaker opened ({circuit.consecutive_failures} failures in a row), so the other "
            f"{analytics.queued} wait instead of failing too"
        )
        for partition in shown.partitions:
            say(_row(partition))
        return shown
    finally:
        await client.bulkheads.delete(bulkhead.id)
        say(f"deleted {bulkhead.name}: its agents are released")


async def _analytics_tripped(
    client: Client, bulkhead_id: str, timeout: float = 30.0
) -> bulkhead_pb2.Bulkhead:
    """Waits until the analytics agent's breaker (the seed's: 5 failures) has opened."""
    deadline = time.monotonic() + timeout
    while True:
        shown = await client.bulkheads.get(bulkhead_id)
        analytics = next(p for p in shown.partitions if p.name == "analytics")
        if analytics.failed >= 5 and analytics.running == 0:
            return shown
        if time.monotonic() > deadline:
            raise TimeoutError("the analytics agent's breaker did not open")
        await asyncio.sleep(0.05)


async def _joined(client: Client, bulkhead_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        shown = await client.bulkheads.get(bulkhead_id)
        if all(p.agents >= 1 for p in shown.partitions if p.name in ("auth", "analytics")):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the partition agents did not join")
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default="127.0.0.1:50051")
    args = parser.parse_args()
    children: list[subprocess.Popen[bytes]] = []

    def start_agents(argument_lists: Sequence[Sequence[str]]) -> None:
        for arguments in argument_lists:
            command = [sys.executable, "-m", "godel_grpc.cli", "agent", *arguments]
            children.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))

    async def go() -> None:
        async with Client(args.coordinator) as client:
            await run(client, start_agents)

    try:
        asyncio.run(go())
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(15)


if __name__ == "__main__":
    main()
