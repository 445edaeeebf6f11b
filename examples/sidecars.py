"""The seed's agent with a logger and a monitor sidecar (section 10): spawn it, give it
work, and show what each sidecar saw: the monitor's latest sample of the agent process
(reported to the coordinator, shown by GetAgent) and the logger's newest lines.

Needs a coordinator that can spawn agents (`godel serve`); the logger's file is read
from the coordinator's data directory when `--data-dir` is given:

    python examples/sidecars.py 127.0.0.1:50051 --data-dir .godel
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.client import Client

AGENT_WITH_SIDECARS = {
    "role": "worker",
    "sidecars": [
        {"name": "logger", "image": "godel/sidecar-logger:latest", "config": {"level": "debug"}},
        {
            "name": "monitor",
            "image": "godel/sidecar-monitor:latest",
            "config": {"metrics": ["cpu", "memory"]},
        },
    ],
}


async def _until(
    client: Client, agent_id: str, check: Callable[[agent_pb2.Agent], bool], timeout: float
) -> agent_pb2.Agent:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        agent = await client.agents.get(agent_id)
        if check(agent):
            return agent
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"agent {agent_id}: condition not met within {timeout} s")
        await asyncio.sleep(0.1)


async def run(
    client: Client, data_dir: Path | None = None, say: Callable[[str], None] = print
) -> bool:
    """Runs the example; True when both sidecars showed their work."""
    agent = await client.agents.spawn(AGENT_WITH_SIDECARS)
    say(f"spawned {agent.name} (pid {agent.pid}) with a logger and a monitor sidecar")
    try:
        await client.agents.wait_ready(agent.id)
        for i in range(3):
            task = await client.tasks.submit(role="worker", title=f"job {i}", payload={"n": i})
            await client.tasks.wait(task.id, timeout=30)
        sampled = await _until(client, agent.id, lambda a: a.HasField("latest_sample"), 30)
        sample = sampled.latest_sample
        say(
            f"monitor: pid {sample.pid}, cpu {sample.cpu_percent:.1f}%, "
            f"memory {sample.memory_rss_bytes / 2**20:.1f} MiB (GetAgent.latest_sample)"
        )
        lines: list[dict[str, object]] = []
        if data_dir is not None:
            log_file = data_dir / "agents" / agent.name / "logger" / "agent.log"
            deadline = asyncio.get_running_loop().time() + 10
            while not lines and asyncio.get_running_loop().time() < deadline:
                if log_file.exists():
                    lines = [json.loads(x) for x in log_file.read_text().splitlines() if x]
                await asyncio.sleep(0.1)
            say(f"logger: {len(lines)} lines at debug and above in {log_file}, newest:")
            for line in lines[-2:]:
                say(f"    [{line.get('level')}] {line.get('message')}")
        return sample.memory_rss_bytes > 0 and (data_dir is None or bool(lines))
    finally:
        stopped = await client.agents.terminate(agent.id)
        say(f"terminated {stopped.name}: agent and both sidecars stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="coordinator")
    parser.add_argument("--data-dir", type=Path, default=None, help="the coordinator's")
    args = parser.parse_args()

    async def go() -> None:
        async with Client(args.address) as client:
            await run(client, args.data_dir)

    asyncio.run(go())


if __name__ == "__main__":
    main()
