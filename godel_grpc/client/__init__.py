"""The async Python client of a godel coordinator."""

from godel_grpc.client._client import (
    Agents,
    Bulkheads,
    Client,
    ConvoyHandle,
    Convoys,
    Events,
    Queues,
    SagaHandle,
    Sagas,
    SwarmHandle,
    Swarms,
    Tasks,
    struct,
    task_request,
)
from godel_grpc.client._errors import RPCError

__all__ = [
    "Agents",
    "Bulkheads",
    "Client",
    "ConvoyHandle",
    "Convoys",
    "Events",
    "Queues",
    "RPCError",
    "SagaHandle",
    "Sagas",
    "SwarmHandle",
    "Swarms",
    "Tasks",
    "struct",
    "task_request",
]
