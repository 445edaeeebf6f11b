"""Abuse of a real coordinator process with its default limits: a 10 MB message, 1,000
HTTP/2 streams opened and reset in a burst, and a ping flood. The server must refuse
cleanly, stay healthy, and keep answering a well-behaved client throughout.

The bursts are raw HTTP/2 frames (a few lines of framing and HPACK literals below), as
an attacker would send them, not calls a gRPC client would ever make.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from godel_grpc.client import Client
from godel_grpc.client._errors import RPCError
from tests.support import CoordinatorProcess

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_HEADERS, ACK = 0x4, 0x1
CANCEL = 8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _string(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 127
    return bytes([len(raw)]) + raw


def request_headers(authority: str, path: str) -> bytes:
    """HPACK for a gRPC request, from static-table indexes and plain literals."""
    return (
        b"\x83"  # :method POST
        + b"\x86"  # :scheme http
        + b"\x04"
        + _string(path)  # :path, literal without indexing
        + b"\x01"
        + _string(authority)  # :authority
        + b"\x0f\x10"
        + _string("application/grpc")  # content-type (static index 31)
        + b"\x00"
        + _string("te")
        + _string("trailers")
    )


MARK = 0x600D
"""Opaque data of the PING sent after a burst: its ACK means the server has read and
handled every frame before it."""


async def read_frames(reader: asyncio.StreamReader, seconds: float = 15.0) -> dict[int, int]:
    """Frames the server sent, by type, until it acks the mark, sends GOAWAY, closes,
    or `seconds` pass."""
    counts: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            header = await asyncio.wait_for(reader.readexactly(9), left)
            length = int.from_bytes(header[:3], "big")
            payload = await asyncio.wait_for(reader.readexactly(length), left)
            counts[header[3]] = counts.get(header[3], 0) + 1
            if header[3] == GOAWAY:
                break
            if header[3] == PING and header[4] & ACK and payload == struct.pack(">Q", MARK):
                break
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    return counts


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + frame(SETTINGS, 0, 0))
    writer.write(frame(SETTINGS, ACK, 0))  # to the server's settings, read or not
    await writer.drain()
    return reader, writer


async def rapid_reset(port: int, streams: int) -> dict[int, int]:
    """Opens `streams` streams and resets each at once, in one burst."""
    reader, writer = await connect(port)
    block = request_headers(f"127.0.0.1:{port}", "/godel.v1.AgentService/ListAgents")
    burst = b"".join(
        frame(HEADERS, END_HEADERS, stream, block)
        + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
        for stream in range(1, 2 * streams, 2)
    ) + frame(PING, 0, 0, struct.pack(">Q", MARK))
    try:
        writer.write(burst)
        await writer.drain()
    except ConnectionError:
        pass
    counts = await read_frames(reader)
    writer.close()
    return counts


async def ping_flood(port: int, pings: int) -> dict[int, int]:
    """Sends `pings` PING frames on one idle connection as fast as it can."""
    reader, writer = await connect(port)
    try:
        writer.write(b"".join(frame(PING, 0, 0, struct.pack(">Q", n)) for n in range(pings)))
        await writer.drain()
    except ConnectionError:
        pass
    counts = await read_frames(reader)
    writer.close()
    return counts


class Observer:
    """A well-behaved client calling ListAgents in a loop; keeps every latency."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.latencies: list[float] = []
        self.failures: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with Client(self.address, timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await client.agents.list()
                    self.latencies.append(time.perf_counter() - started)
                except RPCError as error:
                    self.failures.append(f"{error.code.name}: {error.message}")
                await asyncio.sleep(0.01)

    def figures(self) -> str:
        if not self.latencies:
            return "no answers"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{len(ordered)} answers, median {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, failures {len(self.failures)}"
        )


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    process = CoordinatorProcess(tmp_path / "data")
    try:
        yield process.start()
    finally:
        process.stop()


async def _healthy(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_abuse_leaves_the_server_healthy(coordinator: CoordinatorProcess) -> None:
    address = coordinator.address
    assert coordinator.proc is not None and coordinator.log is not None
    # On loopback with default flags the coordinator runs open, and says so
    assert any("authentication is OFF" in line for line in coordinator.log.lines)
    process = psutil.Process(coordinator.proc.pid)
    rss_before = process.memory_info().rss
    stop = asyncio.Event()
    observer = Observer(address)
    watching = asyncio.create_task(observer.run(stop))
    try:
        # Given a 10 MB message, it is refused with a clear status, not a crash
        async with Client(address, timeout=20) as client:
            started = time.perf_counter()
            with pytest.raises(RPCError) as refused:
                await client.tasks.submit(role="worker", payload={"blob": "x" * 10_000_000})
            big_seconds = time.perf_counter() - started
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Given 1,000 streams opened and reset in one burst, on each of 3 connections
        started = time.perf_counter()
        resets = await asyncio.gather(*(rapid_reset(coordinator.port, 1000) for _ in range(3)))
        reset_seconds = time.perf_counter() - started
        # Given a flood of 10,000 pings on each of 3 connections
        started = time.perf_counter()
        floods = await asyncio.gather(*(ping_flood(coordinator.port, 10_000) for _ in range(3)))
        flood_seconds = time.perf_counter() - started
        # Then the well-behaved client was answered all along, and still is
        assert await _healthy(address)
        before = len(observer.latencies)
        deadline = time.monotonic() + 10
        while len(observer.latencies) < before + 5:
            assert time.monotonic() < deadline, "the server stopped answering"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await watching
    assert coordinator.proc.poll() is None
    # During a reset burst gRPC itself cancels a few unrelated calls (a cost of the
    # default --max-concurrent-streams, see limits.py); nothing else may fail, and the
    # well-behaved client keeps being answered.
    assert all(failure.startswith("CANCELLED") for failure in observer.failures)
    assert len(observer.failures) * 5 <= len(observer.latencies)  # at most 1 call in 5
    rss_after = process.memory_info().rss
    ping_acks = [flood.get(PING, 0) for flood in floods]
    print(
        f"\n10 MB message: {refused.value.code.name} in {big_seconds * 1000:.0f} ms"
        f"\n3 x 1,000 streams opened and reset: {reset_seconds:.2f} s; server sent "
        f"{[dict(sorted(r.items())) for r in resets]} (frame type: count)"
        f"\n3 x 10,000 pings: {flood_seconds:.2f} s; acks {ping_acks}, GOAWAY "
        f"{[flood.get(GOAWAY, 0) for flood in floods]}"
        f"\nwell-behaved client meanwhile: {observer.figures()}"
        f"\ncoordinator RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB"
    )
    # Each flooding connection was told to go away
    assert all(flood.get(GOAWAY, 0) >= 1 for flood in floods)
    # And the abuse cost the coordinator a bounded amount of memory (about 30 MiB here,
    # most of it the allocator keeping the 10 MB message's and the streams' pages)
    assert rss_after - rss_before < 64 * 2**20
