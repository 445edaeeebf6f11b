"""`client.tasks.run` over one RunTaskStream that every run of a client shares.

A unary RunTask costs both ends a whole call; a message on an open stream costs a
fraction of that, so a round trip on the stream is shorter, and runs side by side cost
the coordinator less. The stream is opened by the first run, numbers each request, and
hands each answer to the run waiting for its number. When it breaks (the coordinator
restarted, say), the runs waiting on it fail with the stream's error and the next run
opens a new one.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
from google.rpc import error_details_pb2

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc._proto.godel.v1 import task_service_pb2_grpc as task_grpc
from godel_grpc.client._errors import RPCError

Answer = task_pb.RunTaskStreamAnswer

ANSWER_GRACE = 5.0
"""Seconds a run waits past its `wait_timeout` for the coordinator's answer (which says
what became of the task) before it gives up on its own."""


class _Stream:
    """One open RunTaskStream and the runs waiting on it.

    Requests go out through a writer task of the stream's own, never from a run's
    coroutine: grpc.aio cancels the whole call when a write is cancelled, and a run is
    cancelled whenever its caller gives up on it.
    """

    def __init__(self, stub: task_grpc.TaskServiceStub) -> None:
        # Reader/writer style: grpc.aio takes no request iterator (its stubs say otherwise).
        self.call: Any = stub.RunTaskStream()  # type: ignore[call-arg]
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        self.broken: RPCError | None = None
        self._outgoing: asyncio.Queue[task_pb.RunTaskStreamRequest] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(), name="run-stream-reader")
        self._writer = loop.create_task(self._write(), name="run-stream-writer")

    def send(self, request: task_pb.RunTaskStreamRequest) -> None:
        self._outgoing.put_nowait(request)

    async def _write(self) -> None:
        while True:
            request = await self._outgoing.get()
            try:
                await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call ended: the reader learns why and fails the waiting runs

    async def _read(self) -> None:
        try:
            async for response in self.call:
                for answer in response.answers:
                    future = self.waiting.get(answer.sequence)
                    if future is not None and not future.done():
                        future.set_result(answer)
        except grpc.aio.AioRpcError as error:
            self.broken = RPCError.from_aio(error)
        except asyncio.CancelledError:
            self.broken = RPCError(grpc.StatusCode.CANCELLED, "the client was closed", [])
            raise
        finally:
            self.broken = self.broken or _ended()
            self._writer.cancel()
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(self.broken)

    async def close(self) -> None:
        self.call.cancel()
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)


def _ended() -> RPCError:
    return RPCError(grpc.StatusCode.UNAVAILABLE, "the coordinator ended the run stream", [])


class TaskRunner:
    """Runs tasks for one client over its shared RunTaskStream (see the module)."""

    def __init__(self, stub: task_grpc.TaskServiceStub) -> None:
        self._stub = stub
        self._stream: _Stream | None = None
        self._numbers = itertools.count(1)

    async def run(
        self, request: task_pb.SubmitTaskRequest, wait_timeout: float | None
    ) -> task_pb2.Task:
        """The task once it has ended and its end is durable.

        Raises:
            RPCError: the task was refused (INVALID_ARGUMENT, say), the stream broke,
                or DEADLINE_EXCEEDED once `wait_timeout` seconds have passed; the task
                then carries on.
        """
        stream = self._open()
        sequence = next(self._numbers)
        answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        stream.waiting[sequence] = answered
        message = task_pb.RunTaskStreamRequest(sequence=sequence, task=request)
        local_limit = None
        if wait_timeout is not None:
            # The coordinator ends the wait and answers with the task; the client waits a
            # little longer for that answer before giving up on its own.
            message.wait_timeout.FromNanoseconds(int(wait_timeout * 1e9))
            local_limit = wait_timeout + ANSWER_GRACE
        try:
            stream.send(message)
            answer = await asyncio.wait_for(answered, local_limit)
        except TimeoutError:
            raise RPCError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer within {local_limit:g} s; the task carries on",
                [],
            ) from None
        finally:
            stream.waiting.pop(sequence, None)
        if answer.error_code:
            raise _refused(answer)
        return answer.task

    def _open(self) -> _Stream:
        if self._stream is None or self._stream.broken is not None:
            self._stream = _Stream(self._stub)
        return self._stream

    async def close(self) -> None:
        """Ends the shared stream; runs still waiting fail with CANCELLED."""
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


def _refused(answer: Answer) -> RPCError:
    """The error RunTask would have raised for this refusal."""
    details: list[object] = []
    if answer.field_problems:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=problem.field, description=problem.description
                    )
                    for problem in answer.field_problems
                ]
            )
        )
    code = grpc.StatusCode.__members__.get(answer.error_code, grpc.StatusCode.UNKNOWN)
    return RPCError(code, answer.message, details)
