"""The seed's elastic swarm (section 3): create it, submit a burst of work, and watch
the autoscaler grow it from its minimum on queue depth.

Swarm agents without an agent template run the coordinator's default command; the tasks
here ask that default handler for a little pretend work each (`workSeconds`), so that the
queue builds up. Needs a coordinator that can spawn agents (`godel serve`):

    python examples/swarm.py 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from godel_grpc._proto.godel.v1 import swarm_pb2
from godel_grpc.client import Client

PROCESSING_SWARM = {
    "name": "processing-swarm",
    "minAgents": 2,
    "maxAgents": 20,
    "scalePolicy": {
        "metric": "queue_depth",
        "target": 10,
        "scaleUpThreshold": 0.8,
        "scaleDownThreshold": 0.3,
    },
}
TASKS = 120


def _decision(event: swarm_pb2.SwarmScaleEvent) -> str:
    return f"{event.from_agents} → {event.to_agents} agents ({event.reason})"


async def run(client: Client, say: Callable[[str], None] = print) -> bool:
    """Runs the example; True when the swarm grew and every task completed."""
    swarm = await client.swarms.create(PROCESSING_SWARM)
    say(f"created swarm {swarm.id}: {PROCESSING_SWARM['minAgents']} to 20 agents, target 10")
    try:
        for i in range(TASKS):
            await swarm.submit(
                {
                    "title": f"process item {i}",
                    "priority": "normal",
                    "payload": {"workSeconds": 0.1},
                }
            )
        say(f"submitted {TASKS} tasks")
        largest = completed = 0
        seen: set[int] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while completed < TASKS and loop.time() < deadline:
            state = await swarm.get()
            largest = max(largest, state.current_agents)
            completed = state.tasks_completed
            for event in reversed(state.scale_events):  # newest first on the wire
                stamp = event.time.ToNanoseconds()
                if stamp not in seen:
                    seen.add(stamp)
                    say(f"    scaled {_decision(event)}")
            await asyncio.sleep(0.25)
        say(f"{completed} of {TASKS} tasks completed; the swarm peaked at {largest} agents")
        return completed == TASKS and largest > 2
    finally:
        await swarm.delete()
        say("deleted the swarm: its agents drain and stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="coordinator")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.address) as client:
            await run(client)

    asyncio.run(go())


if __name__ == "__main__":
    main()
