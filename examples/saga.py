"""The seed's onboarding saga: create a user, send the welcome email, create a trial.

Each step is an action served by an agent; if one fails, the steps that completed are
undone by their compensating actions, last first. As in the seed's
``try { await saga.execute() } catch { await saga.compensate() }``, the saga runs with
manual compensation and this script compensates it when a step failed. Needs a
coordinator and an agent that declares the six actions, e.g. from the repository root:

    godel serve &
    python -m godel_grpc.cli agent --role onboarding \\
        --handler tests.agents.handlers:record_or_fail \\
        --action createUser --action deleteUser --action sendEmail \\
        --action markEmailFailed --action createTrial --action cancelTrial &
    python examples/saga.py 127.0.0.1:50051                      # succeeds
    python examples/saga.py 127.0.0.1:50051 --fail-at createTrial  # rolls back
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from godel_grpc._proto.godel.v1 import saga_pb2
from godel_grpc.client import Client

USER_ONBOARDING = {
    "name": "user-onboarding",
    "steps": [
        {"name": "create-user", "action": "createUser", "compensate": "deleteUser"},
        {"name": "send-welcome-email", "action": "sendEmail", "compensate": "markEmailFailed"},
        {"name": "create-trial", "action": "createTrial", "compensate": "cancelTrial"},
    ],
}


def _name(value: int, enum: Any) -> str:
    return str(enum.Name(value)).removeprefix("STATE_").removeprefix("COMPENSATION_STATE_")


async def _follow(client: Client, saga_id: str, say: Callable[[str], None]) -> saga_pb2.Saga:
    """Prints every step change until the saga comes to rest; returns it then."""
    seen: dict[str, tuple[int, int]] = {}
    final = await client.sagas.get(saga_id)
    async for update in client.sagas.watch(saga_id, timeout=120):
        final = update
        for step in update.steps:
            now = (step.state, step.compensation_state)
            if seen.get(step.name) == now:
                continue
            seen[step.name] = now
            line = f"    {step.name:<20} {_name(step.state, saga_pb2.SagaStep.State)}"
            if step.compensation_state:
                undo = _name(step.compensation_state, saga_pb2.CompensationState)
                line += f", compensation {undo}"
            say(line)
    return final


async def run(
    client: Client, fail_at: str = "", say: Callable[[str], None] = print
) -> saga_pb2.Saga:
    """Creates and executes the seed's saga, compensating it if a step fails; returns it
    once it has come to rest."""
    saga = await client.sagas.create(USER_ONBOARDING)
    say(f"created saga {saga.id}: {len(saga.steps)} steps")
    payload: dict[str, Any] = {"email": "ada@example.com"}
    if fail_at:
        payload["failAt"] = fail_at
    await saga.execute(payload, manual_compensation=True)
    final = await _follow(client, saga.id, say)
    if final.state == saga_pb2.Saga.STATE_FAILED:
        say(f"step {final.failed_step} failed ({final.error.message}); compensating")
        await saga.compensate("a step failed")
        final = await _follow(client, saga.id, say)
    say(f"saga {final.id} {_name(final.state, saga_pb2.Saga.State)}")
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="coordinator")
    parser.add_argument("--fail-at", default="", metavar="ACTION", help="make this action fail")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.address) as client:
            await run(client, args.fail_at)

    asyncio.run(go())


if __name__ == "__main__":
    main()
