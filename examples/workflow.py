"""The seed's combined workflow ("Combining Patterns"): design as a convoy, implement
in an elastic swarm, verify as a saga, under convoy coordination, saga transactions,
circuit breakers and bulkhead isolation. Then the same workflow once more with the
verify stage failing, so the finished stages are undone, last first.

Needs a coordinator that can spawn agents (`godel serve`):

    python examples/workflow.py 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import copy
from collections.abc import Callable
from typing import Any

from godel_grpc._proto.godel.v1 import saga_pb2, workflow_pb2
from godel_grpc.client import Client

ENTERPRISE_FEATURE: dict[str, Any] = {
    "name": "enterprise-feature",
    "patterns": {
        "coordination": "convoy",
        "transaction": "saga",
        "resilience": "circuit-breaker",
        "isolation": "bulkhead",
    },
    "stages": [
        {"name": "design", "pattern": "convoy", "agents": 2},
        {"name": "implement", "pattern": "swarm", "minAgents": 3, "maxAgents": 10},
        {"name": "verify", "pattern": "saga", "agents": 2},
    ],
}

Stage = workflow_pb2.WorkflowStage


def _name(value: int, enum: Any) -> str:
    return str(enum.Name(value)).removeprefix("STATE_").removeprefix("COMPENSATION_STATE_")


def failing_verify() -> dict[str, Any]:
    """The seed's workflow where design and implement can be undone and every verify
    agent's command fails."""
    spec = copy.deepcopy(ENTERPRISE_FEATURE)
    spec["name"] = "enterprise-feature-rollback"
    design, implement, verify = spec["stages"]
    design["compensate"] = "revert-design"
    implement["compensate"] = "revert-implementation"
    verify["exec"] = "echo 'verification failed: 3 tests red' >&2; exit 1"
    return spec


async def run(
    client: Client, spec: dict[str, Any], say: Callable[[str], None] = print
) -> workflow_pb2.Workflow:
    """Creates and starts the workflow, prints each stage change, returns it ended."""
    handle = await client.workflows.create(spec)
    say(f"created workflow {handle.id} ({spec['name']}): {len(spec['stages'])} stages")
    await handle.start({"feature": "single sign-on"})
    seen: dict[str, tuple[int, int]] = {}
    final = handle.workflow
    async for update in client.workflows.watch(handle.id, timeout=180):
        final = update
        for stage in update.stages:
            now = (stage.state, stage.compensation_state)
            if seen.get(stage.name) == now:
                continue
            seen[stage.name] = now
            line = f"    {stage.name:<10} {stage.pattern:<7} {_name(stage.state, Stage.State)}"
            if stage.resource_id:
                line += f" as {stage.resource_id}"
            if stage.compensation_state:
                undo = _name(stage.compensation_state, saga_pb2.CompensationState)
                line += f", undo {undo}"
            say(line)
    say(
        f"workflow {final.id} {_name(final.state, workflow_pb2.Workflow.State)}"
        + (f": {final.error.message}" if final.error.message else "")
    )
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="coordinator")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.address) as client:
            await run(client, ENTERPRISE_FEATURE)
            await run(client, failing_verify())

    asyncio.run(go())


if __name__ == "__main__":
    main()
