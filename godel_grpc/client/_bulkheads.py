"""`client.bulkheads`: partitions of agents with their own limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import bulkhead_pb2, task_pb2
from godel_grpc._proto.godel.v1 import bulkhead_service_pb2 as bulkhead_pb
from godel_grpc._proto.godel.v1 import bulkhead_service_pb2_grpc as bulkhead_grpc
from godel_grpc.client._common import every_page
from godel_grpc.client._errors import translated
from godel_grpc.client._tasks import task_request
from godel_grpc.core.fields import copy_common_fields


class Bulkheads:
    """`client.bulkheads`: isolated partitions of agents (the seed's section 9)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = bulkhead_grpc.BulkheadServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(
        self, spec: Mapping[str, Any] | None = None, **fields: Any
    ) -> bulkhead_pb2.Bulkhead:
        """Creates a bulkhead from the seed's object (`name`, `partitions` of `name`,
        `maxAgents`, `maxTasks`), as a mapping or keywords."""
        request = json_format.ParseDict(
            {**(spec or {}), **fields}, bulkhead_pb.CreateBulkheadRequest()
        )
        response = await self._stub.CreateBulkhead(request, timeout=self._timeout)
        return response.bulkhead

    @translated
    async def submit(self, bulkhead_id: str, partition: str, **fields: Any) -> task_pb2.Task:
        """Submits one task (keyword arguments of `task_request`) to one partition;
        returns it once durable. A full partition raises RPCError RESOURCE_EXHAUSTED
        naming the partition, with `retry_after`."""
        request = bulkhead_pb.SubmitToPartitionRequest(bulkhead_id=bulkhead_id, partition=partition)
        copy_common_fields(task_request(**fields), request)
        response = await self._stub.SubmitToPartition(request, timeout=self._timeout)
        return response.task

    @translated
    async def get(self, bulkhead_id: str) -> bulkhead_pb2.Bulkhead:
        """The bulkhead with each partition's agents and task counters."""
        response = await self._stub.GetBulkhead(
            bulkhead_pb.GetBulkheadRequest(id=bulkhead_id), timeout=self._timeout
        )
        return response.bulkhead

    @translated
    async def list(self) -> list[bulkhead_pb2.Bulkhead]:
        """Every bulkhead, oldest first."""
        return await every_page(
            lambda token: self._stub.ListBulkheads(
                bulkhead_pb.ListBulkheadsRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "bulkheads",
        )

    @translated
    async def delete(self, bulkhead_id: str) -> None:
        """Deletes a bulkhead; its waiting tasks are cancelled, its agents released."""
        await self._stub.DeleteBulkhead(
            bulkhead_pb.DeleteBulkheadRequest(id=bulkhead_id), timeout=self._timeout
        )
