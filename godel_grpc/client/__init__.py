"""The async Python client of a godel coordinator."""

from godel_grpc.client._client import Agents, Client, Events, Tasks, struct, task_request
from godel_grpc.client._errors import RPCError

__all__ = ["Agents", "Client", "Events", "RPCError", "Tasks", "struct", "task_request"]
