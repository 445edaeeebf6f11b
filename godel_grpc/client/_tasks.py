"""`client.tasks`: submit, run, watch and cancel tasks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.client._errors import streamed, translated
from godel_grpc.client._runner import TaskRunner


def task_request(
    *,
    role: str = "",
    action: str = "",
    title: str = "",
    priority: str = "",
    payload: Mapping[str, Any] | None = None,
    idempotency_key: str = "",
    timeout: float | None = None,
    deadline: float | None = None,
    max_attempts: int = 0,
    labels: Mapping[str, str] | None = None,
) -> task_pb.SubmitTaskRequest:
    """Builds a SubmitTaskRequest; `timeout` in seconds, `deadline` as Unix seconds."""
    request = task_pb.SubmitTaskRequest(
        title=title,
        priority=priority,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        labels=dict(labels or {}),
    )
    if role:
        request.role = role
    if action:
        request.action = action
    if payload is not None:
        request.payload.update(dict(payload))
    if timeout is not None:
        request.timeout.FromNanoseconds(int(timeout * 1e9))
    if deadline is not None:
        request.deadline.FromNanoseconds(int(deadline * 1e9))
    return request


class Tasks:
    """`client.tasks`: submit, follow and cancel tasks."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = task_grpc.TaskServiceStub(channel)
        self._timeout = timeout
        self._runner = TaskRunner(self._stub)

    @translated
    async def submit(self, **fields: Any) -> task_pb2.Task:
        """Submits one task (keyword arguments of `task_request`) and returns it, durable."""
        response = await self._stub.SubmitTask(task_request(**fields), timeout=self._timeout)
        return response.task

    async def run(self, *, wait_timeout: float | None = None, **fields: Any) -> task_pb2.Task:
        """Submits one task and returns it once it has ended and its end is durable.

        Every run of this client goes over one RunTaskStream, opened by the first: a
        message on an open stream makes a shorter round trip than a RunTask call, and
        runs side by side share it. Raises RPCError as RunTask would: INVALID_ARGUMENT
        for a malformed task, DEADLINE_EXCEEDED once `wait_timeout` has passed (the task
        carries on), or the stream's error if it broke.

        Args:
            wait_timeout: seconds to wait for the end; None waits as long as it takes.
            **fields: keyword arguments of `task_request`.
        """
        return await self._runner.run(task_request(**fields), wait_timeout)

    async def close(self) -> None:
        """Ends the stream `run` shares, if it is open; runs still waiting fail."""
        await self._runner.close()

    async def submit_stream(
        self,
        requests: AsyncIterable[task_pb.SubmitTaskRequest] | Iterable[task_pb.SubmitTaskRequest],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[task_pb.SubmitTaskStreamAck]:
        """Submits tasks one per message on one stream, as they come, and yields each
        one's answer in order once it is durable: `ack.task`, or why it was refused
        (`ack.error_code`, `ack.message`, `ack.field_problems`), which does not end the
        stream. Requests are numbered from 1 (`ack.sequence`).

        Args:
            requests: the tasks (see `task_request`), sync or async.
            timeout: seconds the whole stream may last; None, as long as it takes.
        """

        async def numbered() -> AsyncIterator[task_pb.SubmitTaskStreamRequest]:
            sequence = 0
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    sequence += 1
                    yield task_pb.SubmitTaskStreamRequest(sequence=sequence, task=request)
            else:
                for request in requests:
                    sequence += 1
                    yield task_pb.SubmitTaskStreamRequest(sequence=sequence, task=request)

        call = self._stub.SubmitTaskStream(numbered(), timeout=timeout)
        async for acks in streamed(call, "acks"):
            for ack in acks:
                yield ack

    @translated
    async def submit_many(
        self, requests: Sequence[task_pb.SubmitTaskRequest]
    ) -> list[task_pb2.Task]:
        """Submits up to 1,000 tasks in one call and one durable write."""
        response = await self._stub.SubmitTasks(
            task_pb.SubmitTasksRequest(requests=requests), timeout=self._timeout
        )
        return list(response.tasks)

    @translated
    async def get(self, task_id: str) -> task_pb2.Task:
        """The task with this id."""
        response = await self._stub.GetTask(
            task_pb.GetTaskRequest(id=task_id), timeout=self._timeout
        )
        return response.task

    @translated
    async def list(
        self, page_size: int = 100, page_token: str = "", state: int = 0
    ) -> tuple[list[task_pb2.Task], str]:
        """A page of tasks, newest first, and the next page's token."""
        response = await self._stub.ListTasks(
            task_pb.ListTasksRequest(page_size=page_size, page_token=page_token, state=state),  # type: ignore[arg-type]
            timeout=self._timeout,
        )
        return list(response.tasks), response.next_page_token

    @translated
    async def cancel(self, task_id: str, reason: str = "") -> task_pb2.Task:
        """Cancels a queued or running task."""
        response = await self._stub.CancelTask(
            task_pb.CancelTaskRequest(id=task_id, reason=reason), timeout=self._timeout
        )
        return response.task

    def watch(self, task_id: str, timeout: float | None = None) -> AsyncIterator[task_pb2.Task]:
        """The task now and after every change, until it ends (or `timeout` seconds)."""
        call = self._stub.WatchTask(task_pb.WatchTaskRequest(id=task_id), timeout=timeout)
        return streamed(call, "task")

    async def wait(self, task_id: str, timeout: float | None = None) -> task_pb2.Task:
        """Waits until the task ends and returns it."""
        last: task_pb2.Task | None = None
        async for task in self.watch(task_id, timeout=timeout):
            last = task
        assert last is not None
        return last
