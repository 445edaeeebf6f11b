"""The raw limit: what grpc.aio in Python does between two processes with no coordinator.

``python -m bench.raw_grpc`` runs a tiny server that echoes: a bidirectional stream
that sends every message straight back, and a unary call that returns its request.
Messages are raw bytes (no protobuf), so the figures bound from above what any Python
gRPC service can do on this machine; the coordinator's figures are read against them.
The client side (`echo_rate`, `ping_latencies`, `stream_ping_latencies`) runs in the
benchmark process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.procs import emit

SERVICE = "bench.Raw"
ECHO = f"/{SERVICE}/Echo"
PING = f"/{SERVICE}/Ping"
PAYLOAD = b"x" * 32
"""About the size of a small control message (an id and a few flags)."""


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    # An async generator, as the coordinator's streaming handlers are written.
    async for message in requests:
        yield message


async def _ping(request: bytes, context: Any) -> bytes:
    return request


async def serve() -> None:
    """Serves the echo service on a free loopback port and prints ``{"port": N}``."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.stream_stream_rpc_method_handler(_echo),
                    "Ping": grpc.unary_unary_rpc_method_handler(_ping),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit({"port": port})
    await server.wait_for_termination()


async def echo_rate(channel: grpc.aio.Channel, messages: int) -> float:
    """Messages per second through one echo stream: each goes out and comes back.

    A writer and a reader run at once, so messages are pipelined as an agent link's
    are; the rate counts round trips completed, one message each way per count.
    """
    call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(ECHO)()

    async def write() -> None:
        for _ in range(messages):
            await call.write(PAYLOAD)
        await call.done_writing()

    async def read() -> int:
        count = 0
        while await call.read() is not grpc.aio.EOF:
            count += 1
        return count

    start = time.perf_counter()
    _, received = await asyncio.gather(write(), read())
    elapsed = time.perf_counter() - start
    if received != messages:
        raise RuntimeError(f"echo stream returned {received} of {messages} messages")
    return messages / elapsed


async def unary_rate(channel: grpc.aio.Channel, calls: int, concurrency: int) -> float:
    """Unary calls per second with `concurrency` calls in flight from this one process.

    The raw counterpart of the single-task producers: one request and one response per
    call, nothing else.
    """
    ping: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PING)
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            await ping(PAYLOAD)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def open_idle_streams(
    address: str, count: int, channels: int
) -> tuple[list[grpc.aio.Channel], list[grpc.aio.StreamStreamCall[bytes, bytes]]]:
    """Opens `count` echo streams over `channels` connections, one round trip on each.

    The raw counterpart of the idle agent links: the server's memory growth per open
    stream is what gRPC itself charges for a link, before the coordinator adds its own
    state. The caller closes the channels (which ends the streams).
    """
    pool = [
        grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
        )
        for i in range(channels)
    ]
    gate = asyncio.Semaphore(100)

    async def open_one(index: int) -> grpc.aio.StreamStreamCall[bytes, bytes]:
        async with gate:
            call: grpc.aio.StreamStreamCall[bytes, bytes] = pool[index % channels].stream_stream(
                ECHO
            )()
            await call.write(PAYLOAD)
            await call.read()
            return call

    calls = await asyncio.gather(*(open_one(i) for i in range(count)))
    return pool, list(calls)


async def ping_latencies(channel: grpc.aio.Channel, samples: int) -> list[float]:
    """Seconds of each of `samples` sequential unary round trips."""
    ping: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PING)
    found: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        await ping(PAYLOAD)
        found.append(time.perf_counter() - start)
    return found


async def stream_ping_latencies(channel: grpc.aio.Channel, samples: int) -> list[float]:
    """Seconds of each of `samples` sequential round trips on one open echo stream: a
    message out and its echo back, the next only after that, as a lone task's lease and
    result travel an agent link at low load."""
    call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(ECHO)()
    found: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        await call.write(PAYLOAD)
        if await call.read() is grpc.aio.EOF:
            raise RuntimeError("the echo stream ended early")
        found.append(time.perf_counter() - start)
    await call.done_writing()
    await call.code()
    return found


if __name__ == "__main__":
    asyncio.run(serve())
