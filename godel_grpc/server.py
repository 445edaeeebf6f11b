"""Builds and runs the coordinator's gRPC server.

Serves every `godel.v1` service of the API (services not implemented yet answer
UNIMPLEMENTED through their generated base class), server reflection, the standard
health service, and Prometheus metrics on a separate HTTP port.

The server listens before the coordinator recovers its state: with a shared PostgreSQL
log, recovery first waits for the log's advisory lock, possibly for as long as another
coordinator stays active. Until then this one is a standby: health answers NOT_SERVING
and every API call is refused with UNAVAILABLE (`api/standby.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from godel_grpc import heap
from godel_grpc._proto.godel import v1 as proto_package
from godel_grpc.api.agent_link import AgentLinkServicer
from godel_grpc.api.agents import AgentServicer
from godel_grpc.api.auth import Authorizer, method_kinds
from godel_grpc.api.bulkheads import BulkheadServicer
from godel_grpc.api.convoys import ConvoyServicer
from godel_grpc.api.events import EventServicer
from godel_grpc.api.interceptor import PER_MESSAGE_VALIDATION, BoundaryInterceptor
from godel_grpc.api.patterns import PatternServicer
from godel_grpc.api.queues import QueueServicer
from godel_grpc.api.reflection_pool import MethodAwarePool
from godel_grpc.api.sagas import SagaServicer
from godel_grpc.api.standby import StandbyGate
from godel_grpc.api.swarms import SwarmServicer
from godel_grpc.api.tasks import TaskServicer
from godel_grpc.api.workflows import WorkflowServicer
from godel_grpc.auth.agent_tokens import AgentCredentials
from godel_grpc.auth.ratelimit import RateLimiter
from godel_grpc.auth.tokens import TokenFile
from godel_grpc.auth.transport import decide, server_credentials
from godel_grpc.config import ServeConfig
from godel_grpc.core.bulkhead_commands import BulkheadCommands
from godel_grpc.core.convoy_commands import ConvoyCommands
from godel_grpc.core.coordinator import Coordinator, CoordinatorSettings
from godel_grpc.core.queue_commands import QueueCommands
from godel_grpc.core.saga_commands import SagaCommands
from godel_grpc.core.swarm_commands import SwarmCommands
from godel_grpc.core.workflow_commands import WorkflowCommands
from godel_grpc.core.workflow_stages import StageRunner
from godel_grpc.metrics import CoordinatorMetrics
from godel_grpc.runtime.local import LocalRuntime
from godel_grpc.runtime.spawned import SpawnedAgents
from godel_grpc.store.base import EventStore
from godel_grpc.store.factory import DEFAULT_SQLITE_FILE, open_store
from godel_grpc.store.urls import redact

log = logging.getLogger(__name__)

SIDECAR_SERVICES = frozenset({"LoggerSidecarService", "MonitorSidecarService"})
"""Served by the sidecar processes, not by the coordinator."""


def api_services() -> list[tuple[ServiceDescriptor, Any, Any]]:
    """(service descriptor, generated base servicer, add-to-server function) of every
    coordinator service in the protos."""
    found = []
    for module_info in pkgutil.iter_modules(proto_package.__path__):
        if not module_info.name.endswith("_service_pb2_grpc"):
            continue
        module = importlib.import_module(f"{proto_package.__name__}.{module_info.name}")
        pb2 = importlib.import_module(f"{proto_package.__name__}.{module_info.name[:-5]}")
        for name, service in pb2.DESCRIPTOR.services_by_name.items():
            if name in SIDECAR_SERVICES:
                continue
            found.append(
                (
                    service,
                    getattr(module, f"{name}Servicer"),
                    getattr(module, f"add_{name}Servicer_to_server"),
                )
            )
    return sorted(found, key=lambda item: item[0].name)


@dataclass
class RunningServer:
    """A started coordinator: its server, core, and the ports it bound."""

    server: grpc.aio.Server
    coordinator: Coordinator
    health: health.aio.HealthServicer
    port: int
    metrics_port: int | None
    registry: CollectorRegistry
    _metrics_server: Any = field(default=None, repr=False)
    runtime: LocalRuntime | None = None
    workflows: WorkflowCommands | None = None
    swarms: SwarmCommands | None = None

    async def stop(self, grace: float) -> None:
        """Stops taking calls, drains agents and in-flight RPCs, then flushes the log."""
        await self.health.enter_graceful_shutdown()
        if self.workflows is not None:
            await self.workflows.close()
        if self.swarms is not None:  # no scaling while everything stops
            await self.swarms.stop()
        try:
            await self.coordinator.stop(grace)
        finally:  # no spawned process outlives the coordinator, even a failed one
            if self.runtime is not None:
                await self.runtime.close(grace)
        await self.server.stop(grace=min(grace, 2.0))
        if self._metrics_server is not None:
            _close_metrics(self._metrics_server)


def _close_metrics(metrics_server: Any) -> None:
    """Stops the /metrics server's thread and closes its listening socket (shutdown
    alone leaves the socket open, which an embedding process would leak)."""
    metrics_server.shutdown()
    metrics_server.server_close()


async def start_server(
    config: ServeConfig, registry: CollectorRegistry | None = None
) -> RunningServer:
    """Starts a coordinator as configured and returns once it is serving.

    Raises:
        UnsafeConfig: the address would be served without the protection the
            safe-defaults rule asks for (`auth/transport.py`).
    """
    security, limits = config.security, config.limits
    protection = decide(
        config.listen,
        security.auth,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        tls_client_ca=security.tls_client_ca,
        insecure=security.insecure,
    )
    tokens = TokenFile(config.data_dir) if protection.auth_required else None
    registry = registry or CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    store = open_store(config.store, config.data_dir)
    coordinator = Coordinator(
        store,
        metrics,
        CoordinatorSettings(
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            retention=config.task_retention,
        ),
    )
    runtime = LocalRuntime(config.data_dir / "agents", default_exec=config.agent_exec)
    runtime.agent_env = security.agent_env()
    credentials = AgentCredentials(tokens) if tokens is not None else None
    swarms = SwarmCommands(coordinator, runtime, credentials=credentials)
    gate = StandbyGate()
    authorizer = Authorizer(
        method_kinds(service for service, _, _ in api_services()),
        tokens,
        RateLimiter(limits.rate_limit, limits.rate_burst),
        agent_name=coordinator.directory.agent_name,
    )
    server = grpc.aio.server(
        interceptors=[
            gate,
            BoundaryInterceptor(metrics, authorizer, per_message=PER_MESSAGE_VALIDATION),
        ],
        options=limits.server_options(),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    spawned = SpawnedAgents(coordinator, runtime, credentials)
    convoys = ConvoyCommands(coordinator)
    sagas = SagaCommands(coordinator)
    workflows = WorkflowCommands(
        coordinator, StageRunner(coordinator, convoys, sagas, swarms, spawned)
    )
    implemented: dict[str, Any] = {
        "TaskService": TaskServicer(coordinator),
        "AgentLinkService": AgentLinkServicer(coordinator),
        "AgentService": AgentServicer(coordinator, spawned=spawned),
        "EventService": EventServicer(coordinator),
        "ConvoyService": ConvoyServicer(convoys),
        "SagaService": SagaServicer(sagas),
        "WorkflowService": WorkflowServicer(workflows),
        "QueueService": QueueServicer(QueueCommands(coordinator)),
        "BulkheadService": BulkheadServicer(BulkheadCommands(coordinator)),
        "SwarmService": SwarmServicer(swarms),
        "PatternService": PatternServicer(coordinator, since=time.time()),
    }
    names = []
    for service, base, add in api_services():
        # A service in the protos without a servicer yet still answers, UNIMPLEMENTED,
        # through its generated base class.
        add(implemented.get(service.name) or base(), server)
        names.append(service.full_name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server, pool=MethodAwarePool()
    )
    if protection.tls:
        port = server.add_secure_port(
            config.listen,
            server_credentials(security.tls_cert, security.tls_key, security.tls_client_ca),
        )
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"could not listen on {config.listen}")
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    runtime.coordinator_address = f"127.0.0.1:{port}"  # spawned agents dial loopback
    metrics_server = None
    metrics_port = None
    if config.metrics_listen:
        host, _, raw_port = config.metrics_listen.rpartition(":")
        metrics_server, _thread = start_http_server(
            int(raw_port), addr=host or "127.0.0.1", registry=registry
        )
        metrics_port = metrics_server.server_port
    if protection.tls and not security.agent_tls_ca:
        log.warning(
            "agents spawned by this coordinator cannot connect over TLS: give --agent-tls-ca"
        )
    if not protection.auth_required:
        log.warning(
            "authentication is OFF: anyone who can reach %s may call every RPC "
            "(start with --auth required to need tokens)",
            config.listen,
        )
    log.info("listening", extra={"port": port, "metrics_port": metrics_port})
    try:
        await coordinator.start()  # waits here while another coordinator holds the log
    except BaseException:
        await server.stop(grace=0)
        if metrics_server is not None:
            _close_metrics(metrics_server)
        raise
    watch_store_failure(store, coordinator)
    gate.activate()
    workflows.resume()
    swarms.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "protection": protection.describe(),
            "auth": "required" if protection.auth_required else "off",
            "tls": protection.tls,
            "listen": config.listen,
            "port": port,
            "metrics_port": metrics_port,
            "store": redact(config.store)
            if config.store
            else str(config.data_dir / DEFAULT_SQLITE_FILE),
        },
    )
    return RunningServer(
        server,
        coordinator,
        health_servicer,
        port,
        metrics_port,
        registry,
        metrics_server,
        runtime,
        workflows,
        swarms,
    )


async def serve(config: ServeConfig) -> int:
    """Runs until SIGTERM or SIGINT, then drains and returns 0. A standby stopped
    before it became active just leaves (0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    starting = asyncio.ensure_future(start_server(config))
    await asyncio.wait([stopper, starting], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("stopped before becoming active")
        return 0
    running = starting.result()
    heap.settle()  # this process only: tests serve in-process and keep their own settings
    assert running.coordinator.fatal is not None
    fatal = running.coordinator.fatal
    await asyncio.wait([stopper, fatal], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    if fatal.done():
        log.critical("stopping: the event store failed", exc_info=fatal.result())
        await running.server.stop(grace=0)
        await runtime_close(running)
        return 1
    log.info("draining", extra={"grace_seconds": config.drain_grace})
    await running.stop(config.drain_grace)
    log.info("stopped")
    return 0


def watch_store_failure(store: EventStore, coordinator: Coordinator) -> None:
    """Stops the coordinator as soon as its store says it can no longer write (for
    PostgreSQL: the connection holding the log's lock is gone, so a standby may be
    taking over), rather than at its next append."""
    failure = store.failure()
    fatal = coordinator.fatal
    if failure is None or fatal is None:
        return

    def stop(done: asyncio.Future[BaseException]) -> None:
        if not done.cancelled() and not fatal.done():
            fatal.set_result(done.result())

    failure.add_done_callback(stop)


async def runtime_close(running: RunningServer) -> None:
    """Stops spawned processes at once when the coordinator dies of a store failure."""
    if running.swarms is not None:
        await running.swarms.stop()
    if running.runtime is not None:
        await running.runtime.close(0.0)
