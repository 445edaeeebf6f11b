"""No spawned process outlives its coordinator, even one killed with SIGKILL (which
gives it no chance to stop its children): the kernel tells each child when its parent
dies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.client import Client
from tests.support import coordinator_process

pytestmark = pytest.mark.integration


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_spawned_agents_and_sidecars_stop_when_the_coordinator_is_killed(
    tmp_path: Path,
) -> None:
    with coordinator_process(tmp_path / "data") as coordinator:
        async with Client(coordinator.address, timeout=10) as client:
            agent = await client.agents.spawn(
                {
                    "role": "worker",
                    "sidecars": [
                        {"name": "logger", "config": {"level": "info"}},
                        {"name": "monitor", "config": {"metrics": ["cpu"]}},
                    ],
                }
            )
            deadline = time.monotonic() + 30
            while (await client.agents.get(agent.id)).state != agent_pb2.Agent.STATE_READY:
                assert time.monotonic() < deadline, "the spawned agent never connected"
                await asyncio.sleep(0.1)
        assert coordinator.proc is not None
        children = psutil.Process(coordinator.proc.pid).children()
        pids = [child.pid for child in children]
        assert agent.pid in pids and len(pids) == 3, pids  # agent, logger, monitor
        coordinator.kill()
        deadline = time.monotonic() + 20
        while any(_running(pid) for pid in pids):
            assert time.monotonic() < deadline, [p for p in pids if _running(p)]
            await asyncio.sleep(0.1)
