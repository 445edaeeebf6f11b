"""What every sidecar process does the same way: serve, announce, stop on a signal.

A sidecar is started by the runtime with ``--listen HOST:0`` and tells its port on the
first line of stdout, as one JSON object (``{"event": "listening", "port": N}``), so the
launcher never has to guess a free port. Its own logs are JSON lines on stderr.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from godel_grpc.api.interceptor import BoundaryInterceptor
from godel_grpc.api.reflection_pool import MethodAwarePool

PER_MESSAGE_METHODS = frozenset({"/godel.v1.LoggerSidecarService/Ship"})
"""Ship's contract is that a record that does not decode or breaks its rules is dropped
and counted while the stream goes on, so its records reach the logger as they come."""

STOP_GRACE = 2.0
"""Seconds in-flight calls get to finish once a sidecar stops."""


@dataclass
class SidecarServer:
    """A started sidecar gRPC server and the port it bound."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int

    async def stop_serving(self) -> None:
        """Tells health checkers the sidecar is going away (NOT_SERVING)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stops taking calls and ends those in flight after `grace` seconds."""
        await self.stop_serving()
        await self.server.stop(grace)


async def start_sidecar_server(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    services: Sequence[str],
) -> SidecarServer:
    """Starts a gRPC server with the sidecar's services, health and reflection.

    Args:
        listen: ``host:port`` to bind; port 0 picks a free one.
        register: adds the sidecar's servicers to the server.
        services: full names of those services, for health and reflection.

    Raises:
        OSError: when the address cannot be bound.
    """
    boundary = BoundaryInterceptor(None, per_message=PER_MESSAGE_METHODS, server_name="sidecar")
    server = grpc.aio.server(interceptors=[boundary])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server, pool=MethodAwarePool()
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    await server.start()
    for name in ["", *services]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return SidecarServer(server, health_servicer, port)


def announce(**fields: object) -> None:
    """Prints the one ``listening`` line a launcher waits for on stdout."""
    sys.stdout.write(json.dumps({"event": "listening", **fields}) + "\n")
    sys.stdout.flush()


def stop_requested() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, which is how the runtime stops a sidecar."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def split_address(address: str) -> tuple[str, int]:
    """Splits ``host:port`` (or ``[v6]:port``); a missing host means loopback.

    Raises:
        ValueError: when the port is not a number from 0 to 65535.
    """
    host, _, port = address.rpartition(":")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {address!r}")
    return host.strip("[]") or "127.0.0.1", number
