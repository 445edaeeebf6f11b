"""The agent package's public surface, and the test handlers it ships for others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import godel_grpc.agent
from godel_grpc.agent import TaskContext, TaskFailed
from tests.agents import handlers


def test_public_names_are_pinned() -> None:
    assert sorted(godel_grpc.agent.__all__) == [
        "Agent",
        "AgentRejected",
        "ExecHandler",
        "Handler",
        "Memory",
        "MemoryLimitError",
        "Output",
        "Reporter",
        "TaskContext",
        "TaskFailed",
        "add_agent_arguments",
        "run_agent_command",
    ]
    for name in godel_grpc.agent.__all__:
        assert getattr(godel_grpc.agent, name) is not None


def ctx(**payload: object) -> TaskContext:
    return TaskContext(
        task_id="t-1", attempt_id="a-1", idempotency_key="k-1", agent_name="b-1", payload=payload
    )


async def test_test_handlers_do_what_they_say() -> None:
    assert handlers.noop(ctx()) == {}
    assert handlers.echo(ctx(x=1)) == {"echo": {"x": 1}, "agent": "b-1"}
    assert handlers.fail_when(ctx()) == {"ok": True, "agent": "b-1"}
    with pytest.raises(TaskFailed) as failure:
        handlers.fail_when(ctx(fail=True, code="NOPE", retryable=True))
    assert (failure.value.code, failure.value.retryable) == ("NOPE", True)
    assert await handlers.sleep(ctx(seconds=0.01)) == {"slept": 0.01, "agent": "b-1"}
    assert await handlers.allocate(ctx(mb=1, seconds=0)) == {"allocated_mb": 1, "agent": "b-1"}


def test_record_appends_one_json_line_per_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "record.jsonl"
    monkeypatch.setenv("GODEL_TEST_RECORD", str(path))

    handlers.record(ctx())
    handlers.record(ctx())

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert (
        lines
        == [{"taskId": "t-1", "attemptId": "a-1", "idempotencyKey": "k-1", "agent": "b-1"}] * 2
    )


def test_context_validates_what_handlers_report() -> None:
    context = ctx()
    with pytest.raises(ValueError):
        context.log("loud", "x")
