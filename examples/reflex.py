"""The seed's reflex agent (section 2): spawn it, rate its work, and watch its score
follow the ratings (an exponentially weighted mean with the spawn's `adaptationRate`)
while the comments travel with its next assignments as lessons.

Needs a coordinator that can spawn agents (`godel serve`):

    python examples/reflex.py 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from godel_grpc.client import Client

REFLEX_AGENT = {
    "role": "worker",
    "reflex": {
        "enabled": True,
        "memory": "persistent",
        "feedbackLoop": True,
        "adaptationRate": 0.1,
    },
}
RATINGS = [
    (4.5, "Good but missed edge case with null input"),
    (2.0, "Ignored the style guide"),
    (5.0, "Exactly what was asked"),
]


async def run(client: Client, say: Callable[[str], None] = print) -> bool:
    """Runs the example; True when the score followed the ratings exactly."""
    agent = await client.agents.spawn(REFLEX_AGENT)
    say(f"spawned reflex agent {agent.name}: persistent memory, adaptation rate 0.1")
    try:
        await client.agents.wait_ready(agent.id)
        expected: float | None = None
        for rating, comments in RATINGS:
            task = await client.tasks.submit(role="worker", title="fix the parser")
            await client.tasks.wait(task.id, timeout=30)
            await client.agents.feedback(
                agent.id, {"taskId": task.id, "rating": rating, "comments": comments}
            )
            expected = rating if expected is None else 0.9 * expected + 0.1 * rating
            shown = (await client.agents.get(agent.id)).reflex
            say(f"    rated {rating} ({comments!r}): score {shown.score:.3f}")
        shown = (await client.agents.get(agent.id)).reflex
        say(f"lessons its next assignments carry: {list(shown.lessons)}")
        return expected is not None and abs(shown.score - expected) < 1e-9
    finally:
        await client.agents.terminate(agent.id)


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
