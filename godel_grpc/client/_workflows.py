"""`client.workflows`: stages that combine convoys, swarms and sagas (the seed's
"Combining Patterns")."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from godel_grpc._proto.godel.v1 import workflow_pb2
from godel_grpc._proto.godel.v1 import workflow_service_pb2 as workflow_pb
from godel_grpc._proto.godel.v1 import workflow_service_pb2_grpc as workflow_grpc
from godel_grpc.client._errors import streamed, translated


class WorkflowHandle:
    """A created workflow: its latest known state and the calls that act on it."""

    def __init__(self, workflows: Workflows, workflow: workflow_pb2.Workflow) -> None:
        self._workflows = workflows
        self.workflow = workflow

    @property
    def id(self) -> str:
        return self.workflow.id

    async def start(self, input: Mapping[str, Any] | None = None) -> workflow_pb2.Workflow:
        """Starts the first stage, handing it `input`."""
        self.workflow = await self._workflows.start(self.id, input)
        return self.workflow

    async def get(self) -> workflow_pb2.Workflow:
        """Refreshes and returns the workflow."""
        self.workflow = await self._workflows.get(self.id)
        return self.workflow

    async def wait(self, timeout: float | None = None) -> workflow_pb2.Workflow:
        """Waits until the workflow ends and returns it."""
        async for workflow in self._workflows.watch(self.id, timeout=timeout):
            self.workflow = workflow
        return self.workflow

    async def delete(self) -> None:
        """Stops the running stage without undoing anything and forgets the workflow."""
        await self._workflows.delete(self.id)


class Workflows:
    """`client.workflows`."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = workflow_grpc.WorkflowServiceStub(channel)
        self._timeout = timeout

    @translated
    async def create(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> WorkflowHandle:
        """Creates a workflow from the seed's object (`name`, `patterns`, `stages`),
        given as a mapping or keyword arguments; it waits, PENDING, for `start`."""
        request = json_format.ParseDict(
            {**(spec or {}), **fields}, workflow_pb.CreateWorkflowRequest()
        )
        response = await self._stub.CreateWorkflow(request, timeout=self._timeout)
        return WorkflowHandle(self, response.workflow)

    @translated
    async def start(
        self, workflow_id: str, input: Mapping[str, Any] | None = None
    ) -> workflow_pb2.Workflow:
        request = workflow_pb.StartWorkflowRequest(id=workflow_id)
        if input is not None:
            given = struct_pb2.Struct()
            given.update(dict(input))
            request.input.CopyFrom(given)
        response = await self._stub.StartWorkflow(request, timeout=self._timeout)
        return response.workflow

    @translated
    async def get(self, workflow_id: str) -> workflow_pb2.Workflow:
        request = workflow_pb.GetWorkflowRequest(id=workflow_id)
        response = await self._stub.GetWorkflow(request, timeout=self._timeout)
        return response.workflow

    @translated
    async def list(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[workflow_pb2.Workflow], str]:
        """One page of workflows, newest first, and the next page's token."""
        request = workflow_pb.ListWorkflowsRequest(page_size=page_size, page_token=page_token)
        response = await self._stub.ListWorkflows(request, timeout=self._timeout)
        return list(response.workflows), response.next_page_token

    @translated
    async def delete(self, workflow_id: str) -> None:
        await self._stub.DeleteWorkflow(
            workflow_pb.DeleteWorkflowRequest(id=workflow_id), timeout=self._timeout
        )

    def watch(
        self, workflow_id: str, timeout: float | None = None
    ) -> AsyncIterator[workflow_pb2.Workflow]:
        """The workflow now and after every change, until it ends."""
        call = self._stub.WatchWorkflow(
            workflow_pb.WatchWorkflowRequest(id=workflow_id), timeout=timeout
        )
        return streamed(call, "workflow")
