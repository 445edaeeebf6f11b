"""The seed's event-sourced agent (section 6): spawn it, give it work, read its events,
and rebuild its state as of an event in the middle of its history.

Needs a coordinator that can spawn agents (`godel serve`):

    python examples/event_sourcing.py 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Callable

from godel_grpc.client import Client, task_request

EVENT_SOURCED_AGENT = {
    "role": "worker",
    "eventSourcing": {"enabled": True, "snapshotInterval": 100},
}
TASKS = 60


async def run(client: Client, say: Callable[[str], None] = print) -> bool:
    """Runs the example; True when the replayed states match what happened."""
    agent = await client.agents.spawn(EVENT_SOURCED_AGENT)
    say(f"spawned {agent.name} ({agent.id}) with event sourcing, a snapshot every 100 events")
    try:
        await client.agents.wait_ready(agent.id)
        tasks = await client.tasks.submit_many(
            [task_request(role="worker", title=f"job {i}", payload={"n": i}) for i in range(TASKS)]
        )
        await asyncio.gather(*(client.tasks.wait(t.id, timeout=60) for t in tasks))
        # The log may trail what the API already showed by a few milliseconds (results
        # are shown once applied, and leases are journalled lazily); read it once it
        # holds every result.
        events = await client.events.get_for_agent(agent.id)
        deadline = asyncio.get_running_loop().time() + 10
        while sum(e.type == "task.succeeded" for e in events) < TASKS:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
            events = await client.events.get_for_agent(agent.id)
        kinds = Counter(event.type for event in events)
        say(
            f"{len(events)} events for the agent: "
            + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        )
        middle = events[len(events) // 2].id
        then = await client.agents.replay(events, middle)
        now = await client.agents.replay(events)
        for label, state in ((f"event {middle}", then), ("the latest event", now)):
            source = (
                f"the snapshot at event {state.snapshot_position} plus {state.events_read} events"
                if state.snapshot_position
                else f"{state.events_read} events, no snapshot below it"
            )
            say(f"replayed as of {label}: {state.agent.tasks_completed} tasks completed ({source})")
        live = await client.agents.get(agent.id)
        say(f"live agent now: {live.tasks_completed} tasks completed")
        return now.agent.tasks_completed == live.tasks_completed == TASKS and (
            0 < then.agent.tasks_completed < TASKS
        )
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
