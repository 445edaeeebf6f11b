"""Many idle agent links from one process, to weigh what an agent costs the coordinator.

``python -m bench.idle_agents --address HOST:PORT --count 1000 --channels 8``

Opens `count` AgentLinkService.Connect streams spread over `channels` channels (each
its own TCP connection), sends each a hello with a distinct name and role ``idle``,
waits for every welcome, prints ``{"connected": N, "seconds": S,
"heartbeat_interval": I}`` and then keeps the links alive with an empty message every
heartbeat interval (as the welcome asks) until it is killed.

One process with raw grpc.aio instead of 1,000 SDK agents: 1,000 Python processes
would not fit in this machine's memory, and what is measured is the coordinator's side.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import grpc

from bench.procs import emit
from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_link_service_pb2_grpc as link_grpc

ROLE = "idle"

_Call = grpc.aio.StreamStreamCall[link_pb2.AgentMessage, link_pb2.CoordinatorMessage]


async def _open(stub: link_grpc.AgentLinkServiceAsyncStub, name: str) -> tuple[_Call, float]:
    """Opens one link; returns it and the heartbeat interval from its welcome."""
    call: _Call = stub.Connect()
    await call.write(link_pb2.AgentMessage(hello=link_pb2.AgentHello(name=name, role=ROLE)))
    welcome = await call.read()
    if not isinstance(welcome, link_pb2.CoordinatorMessage) or not welcome.HasField("welcome"):
        raise RuntimeError(f"{name}: no welcome ({welcome!r})")
    return call, welcome.welcome.heartbeat_interval.ToTimedelta().total_seconds()


async def _heartbeat(call: _Call, interval: float) -> None:
    # Spread the links over the interval so heartbeats do not all arrive at once.
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        await call.write(link_pb2.AgentMessage())
        await asyncio.sleep(interval)


async def hold(address: str, count: int, channels: int, opening: int) -> None:
    """Runs the helper as described in the module docstring."""
    # A local subchannel pool per channel: otherwise gRPC shares one connection
    # between channels with the same target and options.
    pool = [
        grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
        )
        for i in range(channels)
    ]
    stubs = [link_grpc.AgentLinkServiceStub(channel) for channel in pool]
    gate = asyncio.Semaphore(opening)

    async def open_one(index: int) -> tuple[_Call, float]:
        async with gate:
            return await _open(stubs[index % channels], f"idle-{index}")

    start = time.perf_counter()
    links = await asyncio.gather(*(open_one(i) for i in range(count)))
    seconds = time.perf_counter() - start
    interval = min(i for _, i in links) or 2.0
    beats = [asyncio.create_task(_heartbeat(call, interval)) for call, _ in links]
    emit({"connected": len(links), "seconds": seconds, "heartbeat_interval": interval})
    await asyncio.gather(*beats)


def main() -> None:
    """Parses the flags and holds the links until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--opening", type=int, default=100, help="hellos in flight at once")
    args = parser.parse_args()
    asyncio.run(hold(args.address, args.count, args.channels, args.opening))


if __name__ == "__main__":
    main()
