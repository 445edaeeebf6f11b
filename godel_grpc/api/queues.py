"""QueueService: proto in, queue command or query, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from godel_grpc._proto.godel.v1 import queue_service_pb2 as pb
from godel_grpc._proto.godel.v1 import queue_service_pb2_grpc as pb_grpc
from godel_grpc.api.interceptor import check
from godel_grpc.api.pipeline import Decided, answered_in_order
from godel_grpc.core.queue_commands import QueueCommands
from godel_grpc.errors import DeadlineExceeded, GodelError, Unavailable
from godel_grpc.patterns.backpressure import Outcome

Context = grpc.aio.ServicerContext[Any, Any]

Ack = pb.EnqueueStreamResponse

_OUTCOMES = {
    Outcome.ACCEPTED: Ack.OUTCOME_ACCEPTED,
    Outcome.SHED: Ack.OUTCOME_SHED,
    Outcome.REJECTED: Ack.OUTCOME_REJECTED,
}


class QueueServicer(pb_grpc.QueueServiceServicer):
    """Serves QueueService."""

    def __init__(self, commands: QueueCommands) -> None:
        self._commands = commands

    async def CreateQueue(
        self, request: pb.CreateQueueRequest, context: Context
    ) -> pb.CreateQueueResponse:
        return pb.CreateQueueResponse(queue=await self._commands.create(request))

    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.EnqueueResponse:
        return await self._commands.enqueue(request, context.time_remaining())

    async def EnqueueStream(
        self, requests: AsyncIterator[pb.EnqueueStreamRequest], context: Context
    ) -> AsyncIterator[pb.EnqueueStreamResponse]:
        """One ack per request, in order, each sent only once what it changed is
        durable.

        Pipelined (`pipeline.answered_in_order`): requests are decided ahead while the
        acks of earlier ones wait for their commit, so a burst of offers shares one
        commit. While a "block" queue is full the reader waits, and, once the read-ahead
        is used up, so does gRPC's flow control: the producer is pushed back.
        """
        async for acks in answered_in_order(requests, lambda r: self._decide(r, context)):
            for ack in acks:
                yield ack

    async def _decide(self, request: Any, context: Context) -> Decided[Ack]:
        """The ack for one request, and what must be durable before it is sent."""
        sequence = getattr(request, "sequence", 0)
        try:
            check(request)  # undecodable or rule-breaking: INVALID, and the stream goes on
            record = self._commands.queue_for(request.queue_id)
            remaining = context.time_remaining()
            wait_until = None
            if remaining is not None:
                wait_until = asyncio.get_running_loop().time() + max(0.0, remaining - 0.05)
            admitted, durable = await self._commands.admit_pending(record, request, wait_until)
        except Unavailable:
            raise  # shutting down: the stream itself ends
        except DeadlineExceeded as refused:
            record = self._commands.queue_for(request.queue_id)
            ack = Ack(
                sequence=sequence,
                outcome=Ack.OUTCOME_REJECTED,
                pressure=record.policy.pressure,
                depth=record.policy.depth,
                message=refused.message,
            )
            ack.retry_after.FromNanoseconds(int(record.policy.config.retry_after * 1e9))
            return ack, None
        except GodelError as invalid:
            return Ack(
                sequence=sequence, outcome=Ack.OUTCOME_INVALID, message=invalid.message
            ), None
        ack = Ack(
            sequence=sequence,
            outcome=_OUTCOMES[admitted.outcome],
            task_id=admitted.task.id if admitted.task is not None else "",
            pressure=admitted.pressure,
            depth=admitted.depth,
            message=admitted.message,
        )
        if admitted.retry_after is not None and admitted.task is None:
            ack.retry_after.FromNanoseconds(int(admitted.retry_after * 1e9))
        return ack, durable

    async def GetQueue(self, request: pb.GetQueueRequest, context: Context) -> pb.GetQueueResponse:
        return pb.GetQueueResponse(queue=self._commands.get(request.id))

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Context
    ) -> pb.ListQueuesResponse:
        queues, token = self._commands.list(request.page_size, request.page_token)
        return pb.ListQueuesResponse(queues=queues, next_page_token=token)

    async def DeleteQueue(
        self, request: pb.DeleteQueueRequest, context: Context
    ) -> pb.DeleteQueueResponse:
        await self._commands.delete(request.id)
        return pb.DeleteQueueResponse()
