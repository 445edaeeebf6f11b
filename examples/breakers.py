"""The seed's circuit breaker (section 4): an agent spawned with the seed's
`circuitBreaker`, driven into OPEN by failures, then taken back by an operator.

The agent is spawned through the coordinator (`client.agents.spawn`) with the seed's
object and an `exec` command that fails a task whose payload says ``fail``. Five
failures in a row open its breaker; a task submitted then waits instead of reaching the
agent. Rather than wait the seed's 30 s for the trial tasks, the script resets the
breaker by hand (ResetCircuit) and the waiting task runs; then it forces the breaker
open (ForceOpenCircuit), which holds even past the timeout, and resets it again.
Needs only a coordinator (its local runtime starts the agent):

    godel serve &
    python examples/breakers.py --coordinator 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from godel_grpc._proto.godel.v1 import agent_service_pb2, task_pb2
from godel_grpc.client import Client

SEED_SPAWN = {
    "role": "worker",
    "circuitBreaker": {
        "enabled": True,
        "failureThreshold": 5,  # Open after 5 failures
        "timeout": 30,  # Try again after 30s
        "halfOpenRequests": 3,  # Test with 3 requests when half-open
    },
}
FLAKY_EXEC = (
    f"{sys.executable} -c \"import json,sys; fail=json.load(sys.stdin)['payload'].get('fail'); "
    "print('{}'); sys.exit(1 if fail else 0)\""
)
"""Fails (exit code 1) when the task's payload has ``fail``; succeeds otherwise."""

Circuit = agent_service_pb2.GetCircuitStateResponse


def describe(circuit: Circuit) -> str:
    state = Circuit.State.Name(circuit.state).removeprefix("STATE_")
    text = (
        f"{state}{' (forced)' if circuit.forced else ''}: {circuit.consecutive_failures} "
        f"failures in a row, {circuit.failure_count} failed / {circuit.success_count} "
        f"succeeded, opened {circuit.open_count}x, {circuit.refused_count} dispatches held back"
    )
    if circuit.HasField("next_probe_time"):
        text += f", trial tasks from {circuit.next_probe_time.ToDatetime():%H:%M:%S} UTC"
    return text


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the coordinator did not get there in time")
        await asyncio.sleep(0.05)


async def run(client: Client, say: Callable[[str], None] = print) -> Circuit:
    """Runs the story above; returns the breaker as it ends (CLOSED)."""
    agent = await client.agents.spawn({**SEED_SPAWN, "name": "flaky-worker", "exec": FLAKY_EXEC})
    try:
        await client.agents.wait_ready(agent.id)
        circuit = await client.agents.get_circuit_state(agent.id)
        config = circuit.config
        say(
            f"spawned {agent.name} ({agent.id}) with failureThreshold {config.failure_threshold},"
            f" timeout {config.timeout:g} s, halfOpenRequests {config.half_open_requests}"
        )
        say(f"  breaker {describe(circuit)}")
        for _ in range(config.failure_threshold):
            await client.tasks.run(role="worker", payload={"fail": True}, max_attempts=1)
        circuit = await client.agents.get_circuit_state(agent.id)
        say(f"after {config.failure_threshold} failed tasks: breaker {describe(circuit)}")
        waiting = await client.tasks.submit(role="worker", title="after the outage")

        async def held_back() -> bool:
            return (await client.agents.get_circuit_state(agent.id)).refused_count > 0

        await _until(held_back)
        state = task_pb2.Task.State.Name((await client.tasks.get(waiting.id)).state)
        say(f"a new task {waiting.id} is {state.removeprefix('STATE_')}: the breaker holds it")
        circuit = await client.agents.reset_circuit(agent.id, reason="the API is back")
        say(f"an operator resets it: breaker {describe(circuit)}")
        done = await client.tasks.wait(waiting.id, timeout=30)
        say(f"task {done.id} {task_pb2.Task.State.Name(done.state).removeprefix('STATE_')}")
        circuit = await client.agents.force_open_circuit(agent.id, reason="maintenance")
        say(f"forced open for maintenance: breaker {describe(circuit)}")
        circuit = await client.agents.reset_circuit(agent.id, reason="maintenance over")
        say(f"reset after maintenance: breaker {describe(circuit)}")
        return circuit
    finally:
        await client.agents.terminate(agent.id, reason="example done", grace_period=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default="127.0.0.1:50051")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.coordinator) as client:
            await run(client)

    asyncio.run(go())


if __name__ == "__main__":
    main()
