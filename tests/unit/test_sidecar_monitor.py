"""The monitor sidecar in process: its sampler against real child processes, its
gauges on a fresh registry, and its service on a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from prometheus_client import CollectorRegistry

from godel_grpc._proto.godel.v1 import (
    monitor_sidecar_service_pb2,
    monitor_sidecar_service_pb2_grpc,
    sample_pb2,
)
from godel_grpc.errors import InvalidArgument
from sidecars.monitor.exporter import MonitorGauges
from sidecars.monitor.lifetime import wait_for_exit
from sidecars.monitor.monitor import Monitor, check_interval
from sidecars.monitor.sampler import METRICS, ProcessGone, TreeSampler, parse_metrics
from sidecars.monitor.server import serve_monitor

WatchSamplesRequest = monitor_sidecar_service_pb2.WatchSamplesRequest


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A child that holds a few MB and lives until killed."""
    script = "import time; b = bytearray(8 << 20); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_metric_lists_are_checked() -> None:
    assert parse_metrics("cpu, memory") == {"cpu", "memory"}
    assert parse_metrics(",".join(METRICS)) == set(METRICS)
    with pytest.raises(ValueError, match="unknown metrics disk"):
        parse_metrics("cpu,disk")
    with pytest.raises(ValueError, match="at least one"):
        parse_metrics(" , ")


def test_intervals_outside_the_range_are_invalid_arguments() -> None:
    assert check_interval(0.1) == 0.1 and check_interval(3600) == 3600
    for bad in (0.05, 0.0, -1.0, 3601.0):
        with pytest.raises(InvalidArgument) as failure:
            check_interval(bad)
        assert failure.value.violations[0].field == "interval"


def test_only_the_requested_metrics_are_filled(sleeper: subprocess.Popen[bytes]) -> None:
    sample = TreeSampler(sleeper.pid, {"memory"}, agent_id="a-1").sample()
    assert sample.pid == sleeper.pid and sample.agent_id == "a-1"
    assert sample.process_count == 1 and sample.HasField("time")
    assert sample.memory_rss_bytes > 8 << 20
    assert (sample.cpu_percent, sample.threads, sample.open_fds) == (0, 0, 0)
    assert (sample.io_read_bytes, sample.io_write_bytes) == (0, 0)


def test_every_metric_when_all_are_requested(sleeper: subprocess.Popen[bytes]) -> None:
    sample = TreeSampler(sleeper.pid).sample()
    assert sample.threads >= 1 and sample.open_fds >= 3 and sample.memory_rss_bytes > 0


def test_an_exited_process_is_gone_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler = TreeSampler(child.pid)
    # Given a child that exited but that nobody has reaped yet (a zombie)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    # Then it is not alive, sampling it says so, and a new sampler refuses it
    assert not sampler.alive()
    with pytest.raises(ProcessGone):
        sampler.sample()
    with pytest.raises(ProcessGone):
        TreeSampler(child.pid)
    child.wait()


async def test_wait_for_exit_returns_when_the_process_ends() -> None:
    # Given a child blocked reading its stdin
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdin.read()", stdin=asyncio.subprocess.PIPE
    )
    waiter = asyncio.create_task(wait_for_exit(child.pid))
    await asyncio.sleep(0)  # one turn of the loop: the waiter is now waiting
    assert not waiter.done()
    # When its stdin closes, it exits, and the waiter returns
    assert child.stdin is not None
    child.stdin.close()
    assert await asyncio.wait_for(waiter, 10) is True
    await child.wait()


def test_gauges_hold_the_latest_sample_for_the_requested_metrics() -> None:
    registry = CollectorRegistry()
    gauges = MonitorGauges(registry, {"memory", "io"}, agent_id="a-1")
    gauges.update(
        sample_pb2.Sample(memory_rss_bytes=1234, io_read_bytes=5, io_write_bytes=6, threads=9)
    )
    value = registry.get_sample_value
    labels = {"agent_id": "a-1"}
    assert value("godel_agent_memory_rss_bytes", labels) == 1234
    assert value("godel_agent_io_read_bytes", labels) == 5
    assert value("godel_agent_io_write_bytes", labels) == 6
    assert value("godel_agent_threads", labels) is None  # not requested, not exported


class Served:
    def __init__(
        self, monitor: Monitor, stub: monitor_sidecar_service_pb2_grpc.MonitorSidecarServiceStub
    ) -> None:
        self.monitor = monitor
        self.stub = stub


@pytest.fixture
async def served(sleeper: subprocess.Popen[bytes]) -> AsyncIterator[Served]:
    monitor = Monitor(TreeSampler(sleeper.pid, agent_id="a-1"), interval=0.2)
    runner = asyncio.create_task(monitor.run())
    sidecar = await serve_monitor(monitor, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield Served(monitor, monitor_sidecar_service_pb2_grpc.MonitorSidecarServiceStub(channel))
    finally:
        await channel.close()
        await monitor.stop()
        await runner
        await sidecar.stop(0)


async def test_get_sample_returns_a_sample_of_the_process(
    served: Served, sleeper: subprocess.Popen[bytes]
) -> None:
    answer = await served.stub.GetSample(monitor_sidecar_service_pb2.GetSampleRequest())
    assert answer.sample.pid == sleeper.pid and answer.sample.agent_id == "a-1"
    assert answer.sample.memory_rss_bytes > 8 << 20


async def test_watch_samples_follows_the_schedule_or_its_own_interval(served: Served) -> None:
    for request in (
        WatchSamplesRequest(),
        WatchSamplesRequest(interval=duration_pb2.Duration(nanos=100_000_000)),
    ):
        call = served.stub.WatchSamples(request)
        stream = aiter(call)
        times = [
            (await asyncio.wait_for(anext(stream), 5)).sample.time.ToNanoseconds() for _ in range(3)
        ]
        call.cancel()
        assert times == sorted(times) and len(set(times)) == 3


async def test_watch_samples_rejects_an_interval_out_of_range(served: Served) -> None:
    call = served.stub.WatchSamples(
        WatchSamplesRequest(interval=duration_pb2.Duration(nanos=10_000_000))
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await anext(aiter(call))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interval" in (failure.value.details() or "")


async def test_watchers_and_getsample_get_unavailable_once_the_process_exits(
    served: Served, sleeper: subprocess.Popen[bytes]
) -> None:
    # Given a watcher that has its first sample
    call = served.stub.WatchSamples(WatchSamplesRequest())
    stream = aiter(call)
    await asyncio.wait_for(anext(stream), 5)
    # When the watched process dies
    sleeper.kill()
    # Then the monitor notices, the watch ends with UNAVAILABLE, and so does GetSample
    await asyncio.wait_for(served.monitor.exited.wait(), 5)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await asyncio.wait_for(anext(stream), 5)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.GetSample(monitor_sidecar_service_pb2.GetSampleRequest())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
