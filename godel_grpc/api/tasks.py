"""TaskService: proto in, coordinator call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import task_service_pb2 as pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as pb_grpc
from godel_grpc.core.coordinator import Coordinator

Context = grpc.aio.ServicerContext[Any, Any]


class TaskServicer(pb_grpc.TaskServiceServicer):
    """Serves TaskService from the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: Context
    ) -> pb.SubmitTaskResponse:
        (task,) = await self._coordinator.submit_tasks([request])
        return pb.SubmitTaskResponse(task=task)

    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: Context
    ) -> pb.SubmitTasksResponse:
        tasks = await self._coordinator.submit_tasks(request.requests)
        return pb.SubmitTasksResponse(tasks=tasks)

    async def RunTask(self, request: pb.RunTaskRequest, context: Context) -> pb.RunTaskResponse:
        return pb.RunTaskResponse(task=await self._coordinator.run_task(request.task))

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(task=await self._coordinator.get_task(request.id))

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        tasks, token = self._coordinator.list_tasks(
            request.page_size, request.page_token, request.state
        )
        return pb.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        return pb.CancelTaskResponse(
            task=await self._coordinator.cancel_task(request.id, request.reason)
        )

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Context
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        async for task in self._coordinator.watch_task(request.id):
            yield pb.WatchTaskResponse(task=task)
