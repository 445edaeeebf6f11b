"""TaskService: proto in, coordinator call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from godel_grpc._proto.godel.v1 import task_service_pb2 as pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as pb_grpc
from godel_grpc.api.interceptor import check
from godel_grpc.api.pipeline import Decided, answered_as_ready, answered_in_order
from godel_grpc.core.coordinator import Coordinator
from godel_grpc.core.records import TERMINAL_TASK_STATES
from godel_grpc.errors import GodelError, InvalidArgument, Unavailable

Context = grpc.aio.ServicerContext[Any, Any]
Ack = pb.SubmitTaskStreamAck
RunAnswer = pb.RunTaskStreamAnswer


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

    async def SubmitTaskStream(
        self, requests: AsyncIterator[pb.SubmitTaskStreamRequest], context: Context
    ) -> AsyncIterator[pb.SubmitTaskStreamResponse]:
        """Answers each task once it is durable, in order, the answers that are ready
        together in one message.

        Pipelined (`pipeline.answered_in_order`): tasks are accepted ahead while earlier
        ones wait for their commit, so a burst shares one commit, and the answers it
        releases share one message. With one task per message in and one answer per
        message out, each task would cost two streamed messages here; under load it
        costs one and a fraction.
        """
        async for acks in answered_in_order(requests, self._decide):
            yield pb.SubmitTaskStreamResponse(acks=acks)

    async def _decide(self, request: Any) -> Decided[Ack]:
        """Accepts or refuses one streamed task."""
        sequence = getattr(request, "sequence", 0)
        try:
            check(request)  # undecodable or rule-breaking: refused, and the stream goes on
        except InvalidArgument as invalid:
            return _refusal(Ack(sequence=sequence), invalid), None
        try:
            (task,), written = await self._coordinator.admit_tasks([request.task])
        except Unavailable:
            raise  # shutting down: the stream itself ends
        except GodelError as refused:
            return _refusal(Ack(sequence=sequence), refused, "task."), None
        return Ack(sequence=sequence, task=task), written

    async def RunTask(self, request: pb.RunTaskRequest, context: Context) -> pb.RunTaskResponse:
        return pb.RunTaskResponse(task=await self._coordinator.run_task(request.task))

    async def RunTaskStream(
        self, requests: AsyncIterator[pb.RunTaskStreamRequest], context: Context
    ) -> AsyncIterator[pb.RunTaskStreamResponse]:
        """Runs each streamed task as RunTask does and answers it when it ends, the
        answers ready together in one message (`pipeline.answered_as_ready`)."""
        async for answers in answered_as_ready(requests, self._run):
            yield pb.RunTaskStreamResponse(answers=answers)

    async def _run(self, request: Any) -> RunAnswer:
        """Runs or refuses one streamed task."""
        sequence = getattr(request, "sequence", 0)
        try:
            check(request)  # undecodable or rule-breaking: refused, and the stream goes on
        except InvalidArgument as invalid:
            return _refusal(RunAnswer(sequence=sequence), invalid)
        wait = (
            request.wait_timeout.ToNanoseconds() / 1e9 if request.HasField("wait_timeout") else None
        )
        try:
            task = await self._coordinator.run_task(request.task, wait)
        except Unavailable:
            raise  # shutting down: the stream itself ends
        except GodelError as refused:
            return _refusal(RunAnswer(sequence=sequence), refused, "task.")
        if task.state not in TERMINAL_TASK_STATES:  # the wait ran out first
            return RunAnswer(
                sequence=sequence,
                task=task,
                error_code=grpc.StatusCode.DEADLINE_EXCEEDED.name,
                message=f"task {task.id} did not end within {wait:g} s; it carries on",
            )
        return RunAnswer(sequence=sequence, task=task)

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


Refused = TypeVar("Refused", Ack, RunAnswer)


def _refusal(answer: Refused, error: GodelError, prefix: str = "") -> Refused:
    """`answer` to a refused task: the status the unary call would have returned, with
    field paths relative to the stream's request (`prefix` leads the paths of the
    coordinator's violations, which are relative to the task)."""
    answer.error_code = error.code.name
    answer.message = error.message
    if isinstance(error, InvalidArgument):
        for violation in error.violations:
            answer.field_problems.add(
                field=prefix + violation.field, description=violation.description
            )
    return answer
