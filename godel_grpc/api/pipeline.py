"""Answers to a request stream: in order once durable, or as each is ready.

EnqueueStream and SubmitTaskStream answer in order (`answered_in_order`): a reader
decides on each request as it comes (accepting it changes memory at once and journals
it), while the answers wait for their commit. Reading ahead is what lets a burst share
one commit instead of paying one per request; the bound on it is what pushes back on a
producer, through gRPC's flow control, once the disk falls behind.

RunTaskStream answers as each request is done (`answered_as_ready`): its requests are
tasks that end in any order, so each is worked on by a task of its own, at most a bound
at a time, and the answers ready together go out together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

READ_AHEAD = 1024
"""Requests of one stream decided ahead of their answers (waiting for durability)."""

IN_FLIGHT = 1024
"""Requests of one stream worked on at once by `answered_as_ready`; beyond it the stream
is not read, and gRPC's flow control holds the caller back."""

Decided = tuple[Answer, Awaitable[object] | None]
"""One request's answer, and what must be done (durable) before it is sent."""


async def answered_in_order(
    requests: AsyncIterator[Request],
    decide: Callable[[Request], Awaitable[Decided[Answer]]],
) -> AsyncIterator[list[Answer]]:
    """Yields the answers to `requests` in their order, those ready together in one
    list, each only once its awaitable is done.

    A decision that raises ends the stream with that error (shutting down, say), after
    the answers decided before it.
    """
    slots = asyncio.Semaphore(READ_AHEAD)  # bounds `decided`, whose end marker fits
    decided: asyncio.Queue[Decided[Answer] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                decided.put_nowait(await decide(request))
        finally:
            decided.put_nowait(None)

    reader = asyncio.get_running_loop().create_task(read(), name="stream-reader")
    try:
        ended = False
        while not ended and (first := await decided.get()) is not None:
            batch = [first]
            while not decided.empty():
                more = decided.get_nowait()
                if more is None:
                    ended = True
                    break
                batch.append(more)
            for _, durable in batch:
                if durable is not None:
                    await durable  # in commit order: mostly already done
            yield [answer for answer, _ in batch]
            for _ in batch:
                slots.release()
        await reader  # its error (shutting down), if any, ends the stream
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def answered_as_ready(
    requests: AsyncIterator[Request],
    answer: Callable[[Request], Coroutine[Any, Any, Answer]],
) -> AsyncIterator[list[Answer]]:
    """Yields each request's answer as soon as `answer` returns it, those ready together
    in one list, working on up to `IN_FLIGHT` requests at once.

    An `answer` that raises ends the stream with that error (shutting down, say), as
    does a failure to read the requests; the requests still being worked on are then
    cancelled, and so they are when the caller stops reading.
    """
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(IN_FLIGHT)
    finished: asyncio.Queue[asyncio.Task[Answer] | asyncio.Task[None]] = asyncio.Queue()
    working: set[asyncio.Task[Answer]] = set()

    def done(task: asyncio.Task[Answer]) -> None:
        working.discard(task)
        slots.release()
        if not task.cancelled():
            finished.put_nowait(task)

    async def read() -> None:
        async for request in requests:
            await slots.acquire()
            task: asyncio.Task[Answer] = loop.create_task(answer(request), name="stream-answer")
            working.add(task)
            task.add_done_callback(done)

    reader = loop.create_task(read(), name="stream-reader")
    reader.add_done_callback(finished.put_nowait)
    try:
        reading = True
        while reading or working or not finished.empty():
            ready = [await finished.get()]
            while not finished.empty():
                ready.append(finished.get_nowait())
            answers: list[Answer] = []
            for task in ready:
                if task is reader:
                    reading = False
                    reader.result()  # a broken request stream ends the call with its error
                else:
                    answers.append(task.result())  # type: ignore[arg-type]
            if answers:
                yield answers
    finally:
        reader.cancel()
        for task in working:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *working, return_exceptions=True)
