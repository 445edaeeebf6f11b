"""The seed's CQRS agents (section 7): a command agent that may only write and a query
agent that may only read. With authentication on, each spawned agent gets credentials
with just those scopes; here each agent's task command probes the coordinator with
them, once writing (SubmitTask) and once reading (ListTasks), and reports what it was
allowed to do.

Needs a coordinator started with `--auth required` and an admin token:

    godel token create --scopes admin --data-dir .godel          # prints TOKEN
    godel serve --auth required --data-dir .godel &
    python examples/cqrs.py 127.0.0.1:50051 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import task_service_pb2, task_service_pb2_grpc
from godel_grpc.auth.channel import open_channel
from godel_grpc.client import Client

COMMAND_AGENT = {"role": "worker", "purpose": "command", "models": {"write": True, "read": False}}
QUERY_AGENT = {"role": "worker", "purpose": "query", "models": {"write": False, "read": True}}
PROBE = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} --probe"
"""The task command of both agents: this file, in probe mode."""


async def probe() -> dict[str, str]:
    """Run as an agent's task command: tries one write and one read with the agent's
    own credentials (GODEL_TOKEN, which the coordinator minted for it)."""
    outcome: dict[str, str] = {}
    async with open_channel(
        os.environ["GODEL_COORDINATOR"], token=os.environ.get("GODEL_TOKEN", "")
    ) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        write = task_service_pb2.SubmitTaskRequest(role="cqrs-audit", title="written by probe")
        write.deadline.GetCurrentTime()
        write.deadline.seconds += 1  # nobody serves the role: it expires, harmlessly
        try:
            await tasks.SubmitTask(write, timeout=10)
            outcome["write"] = "allowed"
        except grpc.aio.AioRpcError as error:
            outcome["write"] = error.code().name
        try:
            listed = await tasks.ListTasks(task_service_pb2.ListTasksRequest(), timeout=10)
            outcome["read"] = f"allowed ({len(listed.tasks)} tasks seen)"
        except grpc.aio.AioRpcError as error:
            outcome["read"] = error.code().name
    return outcome


async def _spawn_and_probe(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    agent = await client.agents.spawn({**spec, "exec": PROBE})
    try:
        await client.agents.wait_ready(agent.id)
        task = await client.tasks.submit(role="worker", title=f"probe as {spec['purpose']}")
        done = await client.tasks.wait(task.id, timeout=60)
        if not done.HasField("output"):
            return {"error": done.error.message}
        return dict(json_format.MessageToDict(done.output))
    finally:
        await client.agents.terminate(agent.id)


async def run(client: Client, say: Callable[[str], None] = print) -> bool:
    """Runs the example; True when each agent could do exactly what its scopes say."""
    results = {}
    for spec in (COMMAND_AGENT, QUERY_AGENT):
        outcome = await _spawn_and_probe(client, spec)
        results[spec["purpose"]] = outcome
        say(f"{spec['purpose']} agent (models {spec['models']}): {outcome}")
    command, query = results["command"], results["query"]
    return (
        command.get("write") == "allowed"
        and command.get("read") == "PERMISSION_DENIED"
        and query.get("write") == "PERMISSION_DENIED"
        and str(query.get("read", "")).startswith("allowed")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="coordinator")
    parser.add_argument("--token", default=os.environ.get("GODEL_TOKEN", ""), help="admin")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        sys.stdin.read()  # the task, which the probe does not need
        print(json.dumps(asyncio.run(probe())))
        return

    async def go() -> None:
        async with Client(args.address, token=args.token) as client:
            await run(client)

    asyncio.run(go())


if __name__ == "__main__":
    main()
