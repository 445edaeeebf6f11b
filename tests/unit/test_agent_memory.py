"""The SDK's reflex memory: local reads, limits at the call site, writes queued for the
link (latest per key), and a welcome that keeps writes not sent yet."""

from __future__ import annotations

import pytest

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc.agent import Memory, MemoryLimitError, TaskContext
from godel_grpc.agent._memory import Write
from godel_grpc.agent._outbox import Outbox
from godel_grpc.patterns.reflex import MAX_VALUE_BYTES


def test_memory_reads_copies_and_sends_each_write() -> None:
    sent: list[Write] = []
    memory = Memory(sent.append)
    memory.set("seen", [1, 2])
    got = memory.get("seen")
    got.append(3)
    assert memory.get("seen") == [1, 2] and memory.get("missing", 0) == 0
    memory.delete("seen")
    assert "seen" not in memory and len(memory) == 0
    assert sent == [("seen", [1, 2], False), ("seen", None, True)]


def test_memory_refuses_what_breaks_a_limit_and_keeps_what_it_had() -> None:
    memory = Memory()
    memory.set("k", 1)
    with pytest.raises(MemoryLimitError, match="16384"):
        memory.set("k", "x" * MAX_VALUE_BYTES)
    with pytest.raises(MemoryLimitError, match="JSON"):
        memory.set("k", object())
    assert memory.get("k") == 1


def test_welcome_memory_with_unsent_writes_on_top() -> None:
    memory = Memory()
    memory.reset({"a": 1, "b": 2}, {"b": ("b", None, True), "c": ("c", 3, False)})
    assert memory.as_dict() == {"a": 1, "c": 3}


def test_a_write_on_its_way_to_the_link_survives_a_welcome() -> None:
    # Given a write a handler thread made that the link has not queued yet
    sent: list[Write] = []
    memory = Memory(sent.append)
    memory.set("d", 4)
    # When a welcome arrives without it, then the memory still has it
    memory.reset({"a": 1}, {})
    assert memory.as_dict() == {"a": 1, "d": 4}
    # And once the link has queued it, the outbox is what accounts for it
    memory.confirm(sent[0])
    memory.reset({"a": 1}, {})
    assert memory.as_dict() == {"a": 1}


def test_context_built_directly_has_a_local_memory() -> None:
    ctx = TaskContext(task_id="t", attempt_id="a")
    ctx.memory.set("x", {"y": 1})
    assert ctx.memory.get("x") == {"y": 1} and ctx.lessons == [] and ctx.score == 0.0


async def test_outbox_keeps_the_latest_write_per_key_and_restores_older_only_if_unsent() -> None:
    outbox = Outbox()
    outbox.add_memory_write(link_pb2.MemoryWrite(key="k", delete=True))
    outbox.add_memory_write(link_pb2.MemoryWrite(key="j", delete=True))
    outbox.add_memory_write(link_pb2.MemoryWrite(key="k"))
    assert outbox.must_deliver
    message = await outbox.take(1.0)
    assert message is not None
    assert [(w.key, w.delete) for w in message.memory_writes] == [("j", True), ("k", False)]
    # When the write failed and "j" was written again meanwhile, the newer "j" stays
    outbox.add_memory_write(link_pb2.MemoryWrite(key="j"))
    outbox.restore(message)
    assert {k: w.delete for k, w in outbox.unsent_memory().items()} == {"j": False, "k": False}
