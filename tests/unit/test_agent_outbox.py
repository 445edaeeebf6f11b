"""The agent's outbox (batching, bounds, restore) and its reconnect backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc.agent._backoff import Backoff
from godel_grpc.agent._outbox import Outbox


def result(n: int, padding: int = 0) -> link_pb2.TaskResult:
    r = link_pb2.TaskResult(task_id=f"t-{n}", attempt_id=f"a-{n}")
    r.output.update({"pad": "x" * padding})
    return r


def log(n: int) -> link_pb2.AgentLogLine:
    return link_pb2.AgentLogLine(task_id="t", level="info", message=f"line {n}")


async def test_everything_waiting_leaves_in_one_message() -> None:
    # Given results, progress, logs and released attempts waiting
    outbox = Outbox()
    outbox.add_result(result(1))
    outbox.add_result(result(2))
    outbox.set_progress(link_pb2.TaskProgress(attempt_id="a-3", fraction=0.1))
    outbox.set_progress(link_pb2.TaskProgress(attempt_id="a-3", fraction=0.7))
    outbox.add_log(log(1))
    outbox.release(["a-4"])

    # When the writer takes
    message = await outbox.take(idle_timeout=1)

    # Then one message carries all of it, with only the latest progress per attempt
    assert message is not None
    assert [r.attempt_id for r in message.results] == ["a-1", "a-2"]
    assert [p.fraction for p in message.progress] == [0.7]
    assert [line.message for line in message.logs] == ["line 1"]
    assert list(message.released_attempt_ids) == ["a-4"]
    assert not outbox.has_parts()


async def test_an_idle_outbox_yields_a_heartbeat() -> None:
    message = await Outbox().take(idle_timeout=0.01)

    assert message == link_pb2.AgentMessage()


async def test_a_closed_empty_outbox_ends_the_writer() -> None:
    outbox = Outbox()
    outbox.add_result(result(1))
    outbox.close()

    assert await outbox.take(idle_timeout=1) is not None
    assert await outbox.take(idle_timeout=1) is None


async def test_draining_is_announced_again_after_each_reconnect() -> None:
    outbox = Outbox()
    outbox.set_draining()
    first = await outbox.take(idle_timeout=1)

    outbox.on_connected()
    second = await outbox.take(idle_timeout=1)

    assert first is not None and first.draining
    assert second is not None and second.draining


async def test_log_lines_are_a_bounded_ring_that_counts_drops() -> None:
    outbox = Outbox(max_logs=3)
    for n in range(5):
        outbox.add_log(log(n))

    message = await outbox.take(idle_timeout=1)

    assert message is not None
    assert [line.message for line in message.logs] == [
        "agent dropped 2 log lines: the link fell behind",
        "line 2",
        "line 3",
        "line 4",
    ]


async def test_big_results_are_spread_over_messages_under_the_size_limit() -> None:
    limit = 200 * 1024
    outbox = Outbox(max_message_bytes=limit)
    for n in range(4):
        outbox.add_result(result(n, padding=60 * 1024))

    sizes = []
    while outbox.has_parts():
        message = await outbox.take(idle_timeout=1)
        assert message is not None
        sizes.append(len(message.results))
        assert message.ByteSize() <= limit

    assert sum(sizes) == 4
    assert len(sizes) > 1


async def test_a_failed_write_is_restored_ahead_of_newer_parts() -> None:
    outbox = Outbox()
    outbox.add_result(result(1))
    outbox.release(["a-9"])
    lost = await outbox.take(idle_timeout=1)
    assert lost is not None
    outbox.add_result(result(2))

    outbox.restore(lost)
    again = await outbox.take(idle_timeout=1)

    assert again is not None
    assert [r.attempt_id for r in again.results] == ["a-1", "a-2"]
    assert list(again.released_attempt_ids) == ["a-9"]


def test_long_log_lines_are_truncated() -> None:
    outbox = Outbox()
    outbox.add_log(link_pb2.AgentLogLine(message="x" * 100_000))

    assert outbox._logs[0].message.endswith("[truncated]")
    assert len(outbox._logs[0].message) < 9 * 1024


@given(
    initial=st.floats(0.001, 1.0),
    factor=st.floats(1.0, 100.0),
    failures=st.integers(0, 200),
    seed=st.integers(),
)
def test_backoff_delays_stay_under_a_doubling_capped_ceiling(
    initial: float, factor: float, failures: int, seed: int
) -> None:
    maximum = initial * factor
    backoff = Backoff(initial, maximum, random.Random(seed))
    for n in range(failures):
        ceiling = min(maximum, initial * 2.0**n)
        assert backoff.ceiling() == pytest.approx(ceiling)
        assert 0 <= backoff.next_delay() <= ceiling

    backoff.reset()
    assert backoff.ceiling() == pytest.approx(initial)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
