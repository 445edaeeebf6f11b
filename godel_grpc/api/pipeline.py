"""Answers to a request stream, in order, each once what it changed is durable.

EnqueueStream and SubmitTaskStream share this shape: a reader decides on each request
as it comes (accepting it changes memory at once and journals it), while the answers
wait for their commit. Reading ahead is what lets a burst share one commit instead of
paying one per request; the bound on it is what pushes back on a producer, through
gRPC's flow control, once the disk falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

READ_AHEAD = 1024
"""Requests of one stream decided ahead of their answers (waiting for durability)."""

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
