"""`client.queues`: backpressure queues."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import queue_pb2
from godel_grpc._proto.godel.v1 import queue_service_pb2 as queue_pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as queue_grpc
from godel_grpc.client._common import every_page
from godel_grpc.client._errors import translated
from godel_grpc.client._tasks import task_request
from godel_grpc.core.fields import copy_common_fields


class Queues:
    """`client.queues`: bounded queues with backpressure (the seed's section 8)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = queue_grpc.QueueServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> queue_pb2.Queue:
        """Creates a queue from the seed's object (`name`, `backpressure` with
        `strategy`, `maxSize`, `highWatermark`, `lowWatermark`), as a mapping or keywords."""
        request = json_format.ParseDict({**(spec or {}), **fields}, queue_pb.CreateQueueRequest())
        response = await self._stub.CreateQueue(request, timeout=self._timeout)
        return response.queue

    @translated
    async def enqueue(
        self, queue_id: str, *, call_timeout: float | None = None, **fields: Any
    ) -> queue_pb.EnqueueResponse:
        """Enqueues one task (keyword arguments of `task_request`); returns the durable
        task with the queue's pressure and depth. A refusal raises RPCError
        RESOURCE_EXHAUSTED with `retry_after`; on a "block" queue the call waits for
        room up to `call_timeout` (default: the client's timeout), then
        DEADLINE_EXCEEDED."""
        request = queue_pb.EnqueueRequest(queue_id=queue_id)
        copy_common_fields(task_request(**fields), request)
        response: queue_pb.EnqueueResponse = await self._stub.Enqueue(
            request, timeout=call_timeout if call_timeout is not None else self._timeout
        )
        return response

    @translated
    async def get(self, queue_id: str) -> queue_pb2.Queue:
        """The queue with its depth, pressure and counters."""
        response = await self._stub.GetQueue(
            queue_pb.GetQueueRequest(id=queue_id), timeout=self._timeout
        )
        return response.queue

    @translated
    async def list(self) -> list[queue_pb2.Queue]:
        """Every queue, oldest first."""
        return await every_page(
            lambda token: self._stub.ListQueues(
                queue_pb.ListQueuesRequest(page_size=1000, page_token=token),
                timeout=self._timeout,
            ),
            "queues",
        )

    @translated
    async def delete(self, queue_id: str) -> None:
        """Deletes a queue; its waiting tasks are cancelled."""
        await self._stub.DeleteQueue(
            queue_pb.DeleteQueueRequest(id=queue_id), timeout=self._timeout
        )
