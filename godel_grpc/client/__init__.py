"""The async Python client of a godel coordinator."""

from godel_grpc.client._agents import Agents
from godel_grpc.client._bulkheads import Bulkheads
from godel_grpc.client._client import Client
from godel_grpc.client._common import struct
from godel_grpc.client._convoys import ConvoyHandle, Convoys
from godel_grpc.client._errors import RPCError
from godel_grpc.client._events import Events
from godel_grpc.client._queues import Queues
from godel_grpc.client._sagas import SagaHandle, Sagas
from godel_grpc.client._swarms import SwarmHandle, Swarms
from godel_grpc.client._tasks import Tasks, task_request

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
