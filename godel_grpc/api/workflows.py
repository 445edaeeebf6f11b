"""WorkflowService: proto in, workflow command or query, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import workflow_service_pb2 as pb
from godel_grpc._proto.godel.v1 import workflow_service_pb2_grpc as pb_grpc
from godel_grpc.core.workflow_commands import WorkflowCommands

Context = grpc.aio.ServicerContext[Any, Any]


class WorkflowServicer(pb_grpc.WorkflowServiceServicer):
    """Serves WorkflowService."""

    def __init__(self, commands: WorkflowCommands) -> None:
        self._commands = commands

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: Context
    ) -> pb.CreateWorkflowResponse:
        return pb.CreateWorkflowResponse(workflow=await self._commands.create(request))

    async def StartWorkflow(
        self, request: pb.StartWorkflowRequest, context: Context
    ) -> pb.StartWorkflowResponse:
        given = request.input if request.HasField("input") else None
        return pb.StartWorkflowResponse(workflow=await self._commands.start(request.id, given))

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Context
    ) -> pb.GetWorkflowResponse:
        return pb.GetWorkflowResponse(workflow=self._commands.get(request.id))

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        workflows, token = self._commands.list(request.page_size, request.page_token, request.state)
        return pb.ListWorkflowsResponse(workflows=workflows, next_page_token=token)

    async def WatchWorkflow(
        self, request: pb.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        async for workflow in self._commands.watch(request.id):
            yield pb.WatchWorkflowResponse(workflow=workflow)

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: Context
    ) -> pb.DeleteWorkflowResponse:
        await self._commands.delete(request.id)
        return pb.DeleteWorkflowResponse()
