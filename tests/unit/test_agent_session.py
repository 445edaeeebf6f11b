"""The coordinator's side of one agent link: what it writes, when, and how it ends.

The writer here is the test's own: it records each message and can be made slow or
broken, which is what a real stream does under load or when its agent vanishes.
"""

from __future__ import annotations

import asyncio

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc.core.session import AgentSession


class Stream:
    """Stands for the link's ``context.write``."""

    def __init__(self) -> None:
        self.written: list[link_pb2.CoordinatorMessage] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.broken = False
        self.ended = asyncio.Event()
        self.blocked = asyncio.Event()
        """Set while a write waits at the closed gate."""
        self._grew = asyncio.Event()

    async def write(self, message: link_pb2.CoordinatorMessage) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            await self.gate.wait()
            self.blocked.clear()
        if self.broken:
            raise ConnectionResetError("peer gone")
        copy = link_pb2.CoordinatorMessage()
        copy.CopyFrom(message)
        self.written.append(copy)
        self._grew.set()

    async def until(self, count: int) -> None:
        """Waits until `count` messages have been written (5 s at most)."""
        async with asyncio.timeout(5):
            while len(self.written) < count:
                self._grew.clear()
                await self._grew.wait()

    def end(self) -> None:
        assert not self.ended.is_set(), "on_end called twice"
        self.ended.set()


def assignment(task_id: str) -> link_pb2.TaskAssignment:
    return link_pb2.TaskAssignment(task_id=task_id, attempt_id=f"{task_id}-1")


async def settle() -> None:
    """Lets every ready task run, for checks that something does NOT happen."""
    for _ in range(5):
        await asyncio.sleep(0)


async def welcomed(capacity: int = 1) -> tuple[AgentSession, Stream]:
    """A session attached to a fresh stream, its welcome already written."""
    session = AgentSession("ag-1", "one", capacity=capacity)
    stream = Stream()
    session.send_welcome(link_pb2.AgentWelcome(agent_id="ag-1"))
    session.attach(stream.write, stream.end)
    await stream.until(1)
    return session, stream


async def test_the_welcome_goes_alone_and_what_follows_in_one_turn_is_merged() -> None:
    session = AgentSession("ag-1", "one", capacity=4)
    stream = Stream()
    session.send_welcome(link_pb2.AgentWelcome(agent_id="ag-1"))
    session.attach(stream.write, stream.end)
    session.send_assignments([assignment("t1")])
    session.send_assignments([assignment("t2")])
    session.send_cancellation("t0", "t0-1", "stop")
    await stream.until(2)
    assert [m.HasField("welcome") for m in stream.written] == [True, False]
    assert not stream.written[0].assignments
    second = stream.written[1]
    assert [a.task_id for a in second.assignments] == ["t1", "t2"]
    assert [c.task_id for c in second.cancellations] == ["t0"]


async def test_an_idle_session_runs_no_task_of_its_own() -> None:
    session = AgentSession("ag-1", "one", capacity=1)
    stream = Stream()
    session.send_welcome(link_pb2.AgentWelcome(agent_id="ag-1"))
    before = len(asyncio.all_tasks())
    session.attach(stream.write, stream.end)
    assert len(asyncio.all_tasks()) == before + 1  # the welcome's flush
    await stream.until(1)
    assert len(asyncio.all_tasks()) == before
    session.send_drain()
    assert len(asyncio.all_tasks()) == before + 1
    await stream.until(2)
    assert len(asyncio.all_tasks()) == before
    assert [m.drain for m in stream.written] == [False, True]


async def test_what_is_queued_while_a_write_is_slow_goes_in_the_next_message() -> None:
    session, stream = await welcomed(8)
    stream.gate.clear()  # the next write blocks, as a full stream would
    session.send_assignments([assignment("t1")])
    await stream.blocked.wait()
    for task_id in ("t2", "t3", "t4"):
        session.send_assignments([assignment(task_id)])
    stream.gate.set()
    await stream.until(3)
    assert [[a.task_id for a in m.assignments] for m in stream.written[1:]] == [
        ["t1"],
        ["t2", "t3", "t4"],
    ]


async def test_close_ends_the_link_only_after_what_was_queued_is_written() -> None:
    session, stream = await welcomed()
    stream.gate.clear()
    session.send_drain()
    await stream.blocked.wait()
    session.send_assignments([assignment("t9")])
    session.close("replaced")
    await settle()
    assert not stream.ended.is_set()  # two messages still to write
    stream.gate.set()
    await asyncio.wait_for(stream.ended.wait(), 5)
    assert [m.drain for m in stream.written[1:]] == [True, False]
    assert stream.written[2].assignments[0].task_id == "t9"
    assert session.closed and session.close_reason == "replaced"


async def test_a_close_with_nothing_queued_ends_the_link_at_once() -> None:
    session, stream = await welcomed()
    session.close("heartbeat timeout")
    assert stream.ended.is_set()


async def test_a_broken_stream_closes_the_session_and_ends_the_link() -> None:
    session, stream = await welcomed()
    stream.broken = True
    session.send_assignments([assignment("t1")])
    await asyncio.wait_for(stream.ended.wait(), 5)
    assert session.closed
    assert session.close_reason == "stream failed: ConnectionResetError"


async def test_after_detach_nothing_is_written_and_a_slow_write_is_cancelled() -> None:
    session, stream = await welcomed()
    stream.gate.clear()
    session.send_assignments([assignment("t1")])
    await stream.blocked.wait()
    before = len(asyncio.all_tasks())
    await asyncio.wait_for(session.detach(), 5)
    assert len(asyncio.all_tasks()) == before - 1  # the blocked flush is gone
    session.send_assignments([assignment("t2")])
    session.close("gone")
    stream.gate.set()
    await settle()
    assert len(stream.written) == 1  # the welcome only
    assert not stream.ended.is_set()  # detached: the link was already over
