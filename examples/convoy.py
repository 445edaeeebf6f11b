"""The seed's convoy: a team of five roles working in dependency order.

architect first; backend and frontend in parallel once the design is done; tester when
both are done; reviewer last. Needs a coordinator with an agent for each role, e.g.:

    godel serve &
    for role in architect backend frontend tester reviewer; do
        godel agent --role $role --handler godel_grpc.demo.handlers:work &
    done
    python examples/convoy.py --coordinator 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from godel_grpc._proto.godel.v1 import convoy_pb2
from godel_grpc.client import Client

FEATURE_IMPLEMENTATION = {
    "name": "feature-implementation",
    "pattern": "convoy",
    "agents": [
        {"role": "architect", "task": "Design system architecture"},
        {"role": "backend", "task": "Implement API endpoints", "dependsOn": ["architect"]},
        {"role": "frontend", "task": "Build UI components", "dependsOn": ["architect"]},
        {"role": "tester", "task": "Write tests", "dependsOn": ["backend", "frontend"]},
        {"role": "reviewer", "task": "Final review", "dependsOn": ["tester"]},
    ],
}


def _state(value: int, enum: Any) -> str:
    return str(enum.Name(value)).removeprefix("STATE_")


async def run(client: Client, say: Callable[[str], None] = print) -> convoy_pb2.Convoy:
    """Creates, starts and follows the seed's convoy; returns it once it has ended."""
    convoy = await client.convoys.create(FEATURE_IMPLEMENTATION)
    say(
        f"created convoy {convoy.id}: {len(convoy.agents)} agents, "
        f"{len(convoy.dependencies)} dependencies"
    )
    await convoy.start()
    seen: dict[str, int] = {}
    final = convoy.convoy
    async for update in client.convoys.watch(convoy.id, timeout=120):
        final = update
        for node in update.agents:
            if seen.get(node.role) != node.state:
                seen[node.role] = node.state
                state = _state(node.state, convoy_pb2.ConvoyNode.State)
                say(f"    {node.role:<10} {state}")
    say(f"convoy {final.id} {_state(final.state, convoy_pb2.Convoy.State)}")
    return final


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
