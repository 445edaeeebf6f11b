"""Coordinators on a shared PostgreSQL event log, as processes: crash and restart, and a
standby that takes over when the active coordinator dies.

Each test gets a fresh database on the machine's PostgreSQL (skipped on a laptop
without one, failed under CI=true).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.client import Client, RPCError, task_request
from godel_grpc.store.postgres import PostgresEventStore
from tests.support import (
    CoordinatorProcess,
    agent_processes,
    postgres_database,
    wait_for_agents,
)

pytestmark = pytest.mark.integration

Task = task_pb2.Task
HANDLERS = "tests.agents.handlers"
TOTAL = 1000
TASK_SECONDS = 0.03
CAPACITY = "16"
"""Two agents run 32 tasks at once: about a second for all 1,000, so a kill after the
first 200 results lands mid-run even on a busy machine."""


async def submit(address: str, total: int) -> list[str]:
    """Submits `total` quick tasks for role "worker" and returns their ids."""
    accepted: list[str] = []
    async with Client(address) as client:
        for _ in range(total // 250):
            batch = await client.tasks.submit_many(
                [task_request(role="worker", payload={"seconds": TASK_SECONDS}) for _ in range(250)]
            )
            accepted.extend(t.id for t in batch)
    return accepted


async def wait_for_successes(address: str, count: int) -> None:
    """Returns once `count` task.succeeded events were published by the coordinator."""
    async with Client(address) as client:
        seen = 0
        async for _update in client.events.subscribe(types=["task.succeeded"]):
            seen += 1
            if seen >= count:
                return


async def wait_until_all_succeeded(address: str, ids: list[str], timeout: float = 60.0) -> None:
    """Asks GetTask for every id until all are SUCCEEDED; fails on any other end state
    or after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = list(ids)
    async with Client(address) as client:
        while pending:
            tasks = await asyncio.gather(*(client.tasks.get(i) for i in pending))
            ended_badly = [
                t.id for t in tasks if t.state in (Task.STATE_FAILED, Task.STATE_CANCELLED)
            ]
            assert not ended_badly, ended_badly[:5]
            pending = [t.id for t in tasks if t.state != Task.STATE_SUCCEEDED]
            if pending:
                assert asyncio.get_running_loop().time() < deadline, f"{len(pending)} unfinished"
                await asyncio.sleep(0.2)


async def results_in_log(url: str) -> tuple[Counter[str], int, int]:
    """task.succeeded events per task id, how many coordinator.started events the log
    holds, and how many results precede the second start. Opens the store, so no
    coordinator may be running on `url`."""
    store = PostgresEventStore(url)
    await store.open()
    results: Counter[str] = Counter()
    starts = 0
    before_restart = 0
    try:
        position = 0
        kinds = ["task.succeeded", "coordinator.started"]
        while batch := await store.read(position, 5000, types=kinds):
            for stored in batch:
                if stored.type == "coordinator.started":
                    starts += 1
                else:
                    results[stored.stream.removeprefix("task/")] += 1
                    before_restart += starts < 2
            position = batch[-1].position
    finally:
        await store.close()
    return results, starts, before_restart


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return int(reply.status)


async def test_sigkill_on_postgres_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """1,000 tasks over 2 agents on a `--store postgresql://` coordinator; it is SIGKILLed
    mid-run and restarted on the same database; every accepted task ends with exactly
    one recorded result."""
    with postgres_database() as url:
        coordinator = CoordinatorProcess(tmp_path / "data", "--store", url)
        try:
            coordinator.start()
            port = coordinator.port
            with agent_processes(
                coordinator.address,
                "worker",
                2,
                "--capacity",
                CAPACITY,
                "--handler",
                f"{HANDLERS}:sleep",
            ):
                async with Client(coordinator.address) as client:
                    await wait_for_agents(client, 2)
                accepted = await submit(coordinator.address, TOTAL)
                await wait_for_successes(coordinator.address, 200)
                coordinator.kill()
                coordinator.start(port=port)
                await wait_until_all_succeeded(coordinator.address, accepted)
            assert coordinator.terminate() == 0
        finally:
            coordinator.stop()
        results, starts, before_restart = await results_in_log(url)
    assert len(accepted) == TOTAL
    assert [t for t in accepted if results[t] != 1] == []
    assert starts == 2
    assert 200 <= before_restart < TOTAL  # the kill hit a run in progress


async def test_standby_takes_over_when_the_active_dies(tmp_path: Path) -> None:
    """An active and a standby coordinator on one database, agents given both addresses.
    The standby says NOT_SERVING and refuses calls; when the active one is SIGKILLed
    mid-run, the standby takes the lock, recovers, the agents reconnect to it, and every
    accepted task completes exactly once."""
    with postgres_database() as url:
        active = CoordinatorProcess(tmp_path / "a", "--store", url)
        standby = CoordinatorProcess(tmp_path / "b", "--store", url)
        try:
            active.start()
            standby.start(until="standby")
            assert await health(standby.address) == health_pb2.HealthCheckResponse.NOT_SERVING
            async with Client(standby.address) as client:
                with pytest.raises(RPCError) as refused:
                    await client.tasks.submit(role="worker")
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                assert refused.value.reason == "STANDBY"
            both = f"{active.address},{standby.address}"
            with agent_processes(
                both, "worker", 2, "--capacity", CAPACITY, "--handler", f"{HANDLERS}:sleep"
            ):
                async with Client(active.address) as client:
                    await wait_for_agents(client, 2)
                accepted = await submit(active.address, TOTAL)
                await wait_for_successes(active.address, 200)

                active.kill()

                assert standby.log is not None
                await asyncio.to_thread(standby.log.wait_for, lambda line: '"serving"' in line)
                assert await health(standby.address) == health_pb2.HealthCheckResponse.SERVING
                async with Client(standby.address) as client:
                    await wait_for_agents(client, 2)  # the same two, reconnected
                    assert len(await client.agents.list()) == 2
                await wait_until_all_succeeded(standby.address, accepted)
            assert standby.terminate() == 0
        finally:
            active.stop()
            standby.stop()
        results, starts, before_restart = await results_in_log(url)
    assert len(accepted) == TOTAL
    assert [t for t in accepted if results[t] != 1] == []
    assert starts == 2  # the active's start, then the standby's takeover
    assert 200 <= before_restart < TOTAL  # the kill hit a run in progress


async def test_coordinator_stops_when_its_lock_session_ends(tmp_path: Path) -> None:
    """Given an active coordinator and a standby, when the server ends the active one's
    locking session (as a network cut or a database failover would), then the active
    coordinator exits with status 1 at once instead of serving stale state, and the
    standby becomes active on the same log."""
    with postgres_database() as url:
        active = CoordinatorProcess(tmp_path / "a", "--store", url)
        standby = CoordinatorProcess(tmp_path / "b", "--store", url)
        try:
            active.start()
            standby.start(until="standby")
            async with Client(active.address) as client:
                task = await client.tasks.submit(role="worker")
            admin = await asyncpg.connect(url)
            try:
                ended = await admin.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            finally:
                await admin.close()
            assert ended
            assert active.proc is not None and standby.log is not None
            assert await asyncio.to_thread(active.proc.wait, 30) == 1
            await asyncio.to_thread(standby.log.wait_for, lambda line: '"serving"' in line)
            async with Client(standby.address) as client:
                assert (await client.tasks.get(task.id)).state == Task.STATE_QUEUED
            assert standby.terminate() == 0
        finally:
            active.stop()
            standby.stop()


async def test_a_standby_stops_cleanly_and_the_active_one_carries_on(tmp_path: Path) -> None:
    """Given an active coordinator and a standby, when the standby gets SIGTERM, then it
    exits 0 at once without touching the log, and the active one keeps serving."""
    with postgres_database() as url:
        active = CoordinatorProcess(tmp_path / "a", "--store", url)
        standby = CoordinatorProcess(tmp_path / "b", "--store", url)
        try:
            active.start()
            standby.start(until="standby")
            assert await asyncio.to_thread(standby.terminate, 10) == 0
            async with Client(active.address) as client:
                task = await client.tasks.submit(role="worker")
                assert (await client.tasks.get(task.id)).state == Task.STATE_QUEUED
            assert await health(active.address) == health_pb2.HealthCheckResponse.SERVING
            assert active.terminate() == 0
        finally:
            active.stop()
            standby.stop()
        _results, starts, _before = await results_in_log(url)
    assert starts == 1
