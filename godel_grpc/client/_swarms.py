"""`client.swarms`: pools of agents that scale with their queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import swarm_pb2, task_pb2
from godel_grpc._proto.godel.v1 import swarm_service_pb2 as swarm_pb
from godel_grpc._proto.godel.v1 import swarm_service_pb2_grpc as swarm_grpc
from godel_grpc.client._common import every_page
from godel_grpc.client._errors import translated
from godel_grpc.client._tasks import task_request
from godel_grpc.core.fields import copy_common_fields


class SwarmHandle:
    """A created swarm, as `client.swarms.create` returns it (the seed's `swarm`)."""

    def __init__(self, swarms: Swarms, swarm: swarm_pb2.Swarm) -> None:
        self._swarms = swarms
        self.swarm = swarm

    @property
    def id(self) -> str:
        return self.swarm.id

    async def submit(self, task: Mapping[str, Any] | None = None, **fields: Any) -> task_pb2.Task:
        """Queues one task on the swarm: the seed's object (`{title, priority}`, in
        JSON names) or keyword arguments of `task_request`."""
        return await self._swarms.submit(self.id, task, **fields)

    async def get(self) -> swarm_pb2.Swarm:
        """The swarm now: size, desired size, queue depth and recent decisions."""
        self.swarm = await self._swarms.get(self.id)
        return self.swarm

    async def delete(self) -> None:
        """Deletes the swarm: waiting tasks cancelled, agents drained and stopped."""
        await self._swarms.delete(self.id)


class Swarms:
    """`client.swarms`: elastic pools of agents (the seed's section 3)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = swarm_grpc.SwarmServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> SwarmHandle:
        """Creates a swarm from the seed's object (`name`, `minAgents`, `maxAgents`,
        `scalePolicy`, optional `agentTemplate`), as a mapping or keywords."""
        request = json_format.ParseDict({**(spec or {}), **fields}, swarm_pb.CreateSwarmRequest())
        response = await self._stub.CreateSwarm(request, timeout=self._timeout)
        return SwarmHandle(self, response.swarm)

    @translated
    async def submit(
        self, swarm_id: str, task: Mapping[str, Any] | None = None, **fields: Any
    ) -> task_pb2.Task:
        """Queues one task on a swarm; returns it once durable."""
        request = json_format.ParseDict(dict(task or {}), swarm_pb.SubmitSwarmTaskRequest())
        if fields:
            copy_common_fields(task_request(**fields), request)
        request.swarm_id = swarm_id
        response = await self._stub.SubmitSwarmTask(request, timeout=self._timeout)
        return response.task

    @translated
    async def get(self, swarm_id: str) -> swarm_pb2.Swarm:
        response = await self._stub.GetSwarm(
            swarm_pb.GetSwarmRequest(id=swarm_id), timeout=self._timeout
        )
        return response.swarm

    @translated
    async def list(self) -> list[swarm_pb2.Swarm]:
        """Every swarm, oldest first."""
        return await every_page(
            lambda token: self._stub.ListSwarms(
                swarm_pb.ListSwarmsRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "swarms",
        )

    @translated
    async def delete(self, swarm_id: str) -> None:
        await self._stub.DeleteSwarm(
            swarm_pb.DeleteSwarmRequest(id=swarm_id), timeout=self._timeout
        )
