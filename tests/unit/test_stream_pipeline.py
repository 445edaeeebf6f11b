"""`pipeline.answered_as_ready`, the shape of RunTaskStream: each request worked on by a
task of its own, answered when done, and nothing left running when the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from godel_grpc.api.pipeline import answered_as_ready


async def requests_of(*items: float) -> AsyncIterator[float]:
    for item in items:
        yield item


async def test_answers_come_as_requests_are_done_not_as_they_were_sent() -> None:
    gates = {name: asyncio.Event() for name in ("slow", "quick")}

    async def answer(name: str) -> str:
        await gates[name].wait()
        return name

    async def names() -> AsyncIterator[str]:
        yield "slow"
        yield "quick"

    # The slow one, sent first, cannot end before the quick one has been answered.
    stream = answered_as_ready(names(), answer)
    gates["quick"].set()
    async with asyncio.timeout(5):  # answering in the order sent would wait here for good
        assert await anext(stream) == ["quick"]
    gates["slow"].set()
    assert [batch async for batch in stream] == [["slow"]]


async def test_answers_ready_together_travel_together() -> None:
    async def answer(value: float) -> float:
        return value * 2

    batches = [batch async for batch in answered_as_ready(requests_of(1, 2, 3), answer)]
    assert sorted(value for batch in batches for value in batch) == [2, 4, 6]
    assert len(batches) < 3


async def test_a_failing_answer_ends_the_stream_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def answer(value: float) -> float:
        if value == 0:
            raise RuntimeError("shutting down")
        try:
            await asyncio.Event().wait()  # never done by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return value

    with pytest.raises(RuntimeError, match="shutting down"):
        async for _ in answered_as_ready(requests_of(1, 0), answer):
            pass
    assert cancelled.is_set()


async def test_a_caller_that_stops_reading_leaves_nothing_running() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def answer(value: float) -> float:
        if value == 1:
            return value
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return value

    stream = answered_as_ready(requests_of(1, 2), answer)
    assert await anext(stream) == [1]
    await started.wait()
    await stream.aclose()
    assert cancelled.is_set()
