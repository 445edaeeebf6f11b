"""Sagas end to end: the seed's onboarding saga sent verbatim with grpcurl, its steps run
by a real agent process, compensations asserted from the agent's own record file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from godel_grpc._proto.godel.v1 import saga_pb2, task_pb2
from godel_grpc.client import Client, RPCError
from godel_grpc.core import events
from godel_grpc.core.fields import copy_common_fields
from godel_grpc.core.pattern_host import CancelOwned, PatternAction, SubmitOwned
from godel_grpc.core.sagas import SagaManager
from godel_grpc.core.state import CoordinatorState
from godel_grpc.server import RunningServer
from tests.support import (
    CoordinatorProcess,
    agent_processes,
    grpcurl_json,
    wait_for_agents,
)

pytestmark = pytest.mark.integration

Saga = saga_pb2.Saga
Step = saga_pb2.SagaStep
HANDLERS = "tests.agents.handlers"

# The seed's saga as JSON: each step's action and compensation given by action name.
SEED_SAGA = """{
  "name": "user-onboarding",
  "steps": [
    { "name": "create-user", "action": "createUser", "compensate": "deleteUser" },
    { "name": "send-welcome-email", "action": "sendEmail", "compensate": "markEmailFailed" },
    { "name": "create-trial", "action": "createTrial", "compensate": "cancelTrial" }
  ]
}"""
STEPS = ["create-user", "send-welcome-email", "create-trial"]
ACTIONS = {
    "create-user": "createUser",
    "send-welcome-email": "sendEmail",
    "create-trial": "createTrial",
}
ACTION_FLAGS = [
    flag
    for action in [
        "createUser",
        "deleteUser",
        "sendEmail",
        "markEmailFailed",
        "createTrial",
        "cancelTrial",
    ]
    for flag in ("--action", action)
]


def seed_saga(**step_fields: Any) -> dict[str, Any]:
    """The seed's saga, with `step_fields` (e.g. retry) added to every step."""
    saga: dict[str, Any] = json.loads(SEED_SAGA)
    for step in saga["steps"]:
        step.update(step_fields)
    return saga


def onboarding_agent(address: str, handler: str, record: Path):  # type: ignore[no-untyped-def]
    """One agent process serving all six actions of the onboarding saga."""
    return agent_processes(
        address,
        "onboarding",
        1,
        "--capacity",
        "4",
        "--handler",
        f"{HANDLERS}:{handler}",
        *ACTION_FLAGS,
        env={"GODEL_TEST_RECORD": str(record)},
    )


def records(path: Path, saga_id: str) -> list[str]:
    """The idempotency keys the agent recorded for one saga, in the order it ran them,
    without the saga id: ``create-user:forward``."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    key = "idempotencyKey" if lines and "idempotencyKey" in lines[0] else "key"
    prefix = f"{saga_id}:"
    return [line[key].removeprefix(prefix) for line in lines if line[key].startswith(prefix)]


def forward(*steps: str) -> list[str]:
    return [f"{step}:forward" for step in steps]


def undo(*steps: str) -> list[str]:
    return [f"{step}:compensate" for step in steps]


async def test_the_seed_onboarding_saga_succeeds(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{server.port}"
    record = tmp_path / "record.jsonl"
    with onboarding_agent(address, "record", record):
        await wait_for_agents(client, 1)
        # Given the seed's onboarding saga, sent verbatim
        created = (await grpcurl_json(address, "godel.v1.SagaService/CreateSaga", SEED_SAGA))[
            "saga"
        ]
        assert created["state"] == "STATE_PENDING"
        assert [step["name"] for step in created["steps"]] == STEPS
        # When it is executed
        execute = json.dumps({"id": created["id"], "input": {"email": "ada@example.com"}})
        running = (await grpcurl_json(address, "godel.v1.SagaService/ExecuteSaga", execute))["saga"]
        # (a fast agent may finish all three steps before the reply is written)
        assert running["state"] in ("STATE_RUNNING", "STATE_SUCCEEDED")
        saga = client.sagas.handle(await client.sagas.get(created["id"]))
        done = await saga.wait(timeout=30)
    # Then every step ran once, in order, and nothing was compensated
    assert done.state == Saga.STATE_SUCCEEDED, done
    assert [step.state for step in done.steps] == [Step.STATE_SUCCEEDED] * 3
    assert all(step.compensation_state == 0 for step in done.steps)
    assert records(record, done.id) == forward(*STEPS)
    # And each step's task went to its action with the input, earlier outputs and its key
    last = await client.tasks.get(done.steps[2].task_id)
    assert last.action == "createTrial"
    assert last.idempotency_key == f"{done.id}:create-trial:forward"
    assert last.payload["input"]["email"] == "ada@example.com"
    assert set(last.payload["steps"].keys()) == {"create-user", "send-welcome-email"}
    assert (last.owner.pattern, last.owner.part, last.owner.phase) == (
        "saga",
        "create-trial",
        "forward",
    )
    listed, _ = await client.sagas.list()
    assert [s.id for s in listed] == [done.id]


async def test_a_failed_step_compensates_exactly_the_completed_steps_in_reverse(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{server.port}"
    record = tmp_path / "record.jsonl"
    with onboarding_agent(address, "record_or_fail", record):
        await wait_for_agents(client, 1)
        # Given one saga per step, each failing at that step (after its retry)
        sagas = []
        for step in STEPS:
            saga = await client.sagas.create(seed_saga(retry={"maxAttempts": 2}))
            await saga.execute({"failAt": ACTIONS[step]})
            sagas.append(saga)
        done = await asyncio.gather(*(saga.wait(timeout=30) for saga in sagas))
    for failed_at, saga in enumerate(done):
        completed = STEPS[:failed_at]
        failing = STEPS[failed_at]
        # Then the agent ran the steps up to the failing one (twice: one retry), then
        # undid the completed ones, last first, and nothing else
        assert records(record, saga.id) == [
            *forward(*completed),
            *forward(failing, failing),
            *undo(*reversed(completed)),
        ]
        # And the saga shows it: COMPENSATED, or FAILED when nothing had completed
        expected = Saga.STATE_COMPENSATED if completed else Saga.STATE_FAILED
        assert saga.state == expected, saga
        assert saga.failed_step == failing
        assert saga.error.code == "STEP_FAILED"
        steps = {step.name: step for step in saga.steps}
        assert steps[failing].state == Step.STATE_FAILED
        assert steps[failing].attempts == 2
        for name in completed:
            assert steps[name].state == Step.STATE_SUCCEEDED
            assert steps[name].compensation_state == saga_pb2.COMPENSATION_STATE_SUCCEEDED
        for name in STEPS[failed_at + 1 :]:
            assert steps[name].state == Step.STATE_CANCELLED
    # And the metrics count the compensations run (0 + 1 + 2) and the sagas by state
    compensations = server.registry.get_sample_value(
        "godel_pattern_part_duration_seconds_count",
        {"pattern": "saga", "phase": "compensate", "outcome": "succeeded"},
    )
    assert compensations == 3
    assert server.registry.get_sample_value("godel_sagas", {"state": "compensated"}) == 2


async def test_a_compensation_that_keeps_failing_is_visible_and_can_be_retried(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{server.port}"
    record = tmp_path / "record.jsonl"
    with onboarding_agent(address, "record_or_fail", record):
        await wait_for_agents(client, 1)
        # Given a saga whose last step fails and whose email compensation fails twice
        saga = await client.sagas.create(seed_saga(retry={"maxAttempts": 2}))
        await saga.execute(
            {"failAt": ["createTrial", "markEmailFailed"], "failTimes": {"markEmailFailed": 2}}
        )
        stuck = await saga.wait(timeout=30)
        # Then it stops COMPENSATION_FAILED, naming the step, with create-user not undone
        assert stuck.state == Saga.STATE_COMPENSATION_FAILED, stuck
        assert stuck == await saga.get()
        assert stuck.error.code == "COMPENSATION_FAILED"
        assert "send-welcome-email" in stuck.error.message
        assert stuck.failed_step == "create-trial"
        email = stuck.steps[1]
        assert email.compensation_state == saga_pb2.COMPENSATION_STATE_FAILED
        assert "markEmailFailed failed on purpose" in email.compensation_error.message
        assert email.compensation_attempts == 2
        assert stuck.steps[0].compensation_state == saga_pb2.COMPENSATION_STATE_PENDING
        assert records(record, saga.id) == [
            *forward("create-user", "send-welcome-email", "create-trial", "create-trial"),
            *undo("send-welcome-email", "send-welcome-email"),
        ]
        # When the caller compensates again, the failed compensation is retried (round 2)
        await saga.compensate("email service is back")
        done = await saga.wait(timeout=30)
    assert done.state == Saga.STATE_COMPENSATED, done
    assert records(record, saga.id)[-2:] == undo("send-welcome-email", "create-user")
    retried = await client.tasks.get(done.steps[1].compensation_task_id)
    assert (retried.owner.phase, retried.owner.round) == ("compensate", 2)
    assert done.steps[1].compensation_attempts == 3


async def test_compensate_rolls_back_a_succeeded_or_manual_saga(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{server.port}"
    record = tmp_path / "record.jsonl"
    with onboarding_agent(address, "record_or_fail", record):
        await wait_for_agents(client, 1)
        # Given a saga that succeeded
        saga = await client.sagas.create(json.loads(SEED_SAGA))
        await saga.execute({})
        assert (await saga.wait(timeout=30)).state == Saga.STATE_SUCCEEDED
        # When it is compensated, every step is undone, last first
        compensating = await saga.compensate("customer left")
        assert compensating.state == Saga.STATE_COMPENSATING
        done = await saga.wait(timeout=30)
        assert done.state == Saga.STATE_COMPENSATED, done
        assert records(record, saga.id) == [*forward(*STEPS), *undo(*reversed(STEPS))]
        # And compensating it again changes nothing
        assert (await saga.compensate()).state == Saga.STATE_COMPENSATED
        # Given a saga in manual mode whose last step fails, it waits for the caller
        manual = await client.sagas.create(json.loads(SEED_SAGA))
        await manual.execute({"failAt": "createTrial"}, manual_compensation=True)
        failed = await manual.wait(timeout=30)
        assert failed.state == Saga.STATE_FAILED and failed.failed_step == "create-trial"
        assert not any(key.endswith(":compensate") for key in records(record, manual.id))
        # Then the seed's catch { compensate() } undoes the completed steps
        await manual.compensate()
        undone = await manual.wait(timeout=30)
    assert undone.state == Saga.STATE_COMPENSATED
    assert records(record, manual.id)[-2:] == undo("send-welcome-email", "create-user")
    assert records(record, saga.id) == [*forward(*STEPS), *undo(*reversed(STEPS))]


async def test_invalid_sagas_and_illegal_transitions_are_refused(client: Client) -> None:
    async def refused(call: Any) -> RPCError:
        with pytest.raises(RPCError) as raised:
            await call
        return raised.value

    empty = await refused(client.sagas.create({"name": "empty", "steps": []}))
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.field_violations[0][0] == "steps"
    twice = {
        "name": "dup",
        "steps": [{"name": "a", "action": "x"}, {"name": "a", "action": "y"}],
    }
    duplicate = await refused(client.sagas.create(twice))
    assert duplicate.code == grpc.StatusCode.INVALID_ARGUMENT
    assert duplicate.field_violations[0][0] == "steps[1].name"
    assert "steps[0]" in duplicate.field_violations[0][1]
    no_action = await refused(client.sagas.create({"name": "n", "steps": [{"name": "a"}]}))
    assert no_action.code == grpc.StatusCode.INVALID_ARGUMENT
    assert no_action.field_violations[0][0] == "steps[0].action"
    missing = await refused(client.sagas.get("s-0-404"))
    assert missing.code == grpc.StatusCode.NOT_FOUND

    # With failFast, a saga whose action no agent declares is refused up front
    fast = await refused(
        client.sagas.create(
            {"name": "f", "failFast": True, "steps": [{"name": "a", "action": "nobodyDoesThis"}]}
        )
    )
    assert fast.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "nobodyDoesThis" in fast.message

    # Without it, no agent serving "nobodyDoesThis" means the saga waits, RUNNING
    stuck = await client.sagas.create(
        {"name": "stuck", "steps": [{"name": "a", "action": "nobodyDoesThis"}]}
    )
    running = await stuck.execute({})
    assert running.state == Saga.STATE_RUNNING and running.current_step == "a"
    again = await refused(stuck.execute({}))
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION
    busy = await refused(stuck.compensate())
    assert busy.code == grpc.StatusCode.FAILED_PRECONDITION
    # Deleting it stops it: its queued task is cancelled
    task_id = running.steps[0].task_id
    await stuck.delete()
    assert (await refused(stuck.get())).code == grpc.StatusCode.NOT_FOUND
    assert (await client.tasks.get(task_id)).state == task_pb2.Task.STATE_CANCELLED
    # A saga compensated before it ran ends CANCELLED and cannot be executed
    pending = await client.sagas.create(json.loads(SEED_SAGA))
    cancelled = await pending.compensate()
    assert cancelled.state == Saga.STATE_CANCELLED
    assert all(step.state == Step.STATE_CANCELLED for step in cancelled.steps)
    assert (await refused(pending.execute({}))).code == grpc.StatusCode.FAILED_PRECONDITION
    # Listing: newest first, a page at a time
    other = await client.sagas.create(json.loads(SEED_SAGA))
    first, token = await client.sagas.list(page_size=1)
    assert [s.id for s in first] == [other.id] and token == other.id
    second, token = await client.sagas.list(page_size=1, page_token=token)
    assert [s.id for s in second] == [pending.id] and token == ""
    only, _ = await client.sagas.list(state=Saga.STATE_CANCELLED)
    assert [s.id for s in only] == [pending.id]


async def test_a_saga_survives_a_coordinator_crash_mid_compensation(tmp_path: Path) -> None:
    """SIGKILL the coordinator while a compensation runs (its effect already applied);
    after a restart on the same data directory the saga ends COMPENSATED and every
    step's effect was applied exactly once."""
    record = tmp_path / "effects.jsonl"
    gate = tmp_path / "gate"
    coordinator = CoordinatorProcess(tmp_path / "data").start()
    port = coordinator.port
    try:
        with onboarding_agent(coordinator.address, "record_once", record):
            async with Client(coordinator.address) as client:
                await wait_for_agents(client, 1)
                saga = await client.sagas.create(json.loads(SEED_SAGA))
                await saga.execute(
                    {"failAt": "createTrial", "holdAt": "markEmailFailed", "gate": str(gate)}
                )
                # Wait until the email compensation's effect is applied and it is held
                deadline = asyncio.get_running_loop().time() + 30
                while "send-welcome-email:compensate" not in records(record, saga.id):
                    assert asyncio.get_running_loop().time() < deadline, "never compensated"
                    await asyncio.sleep(0.02)
                assert (await saga.get()).state == Saga.STATE_COMPENSATING
            coordinator.kill()
            gate.touch()
            coordinator.start(port=port)
            async with Client(coordinator.address) as client:
                done = await client.sagas.handle(await client.sagas.get(saga.id)).wait(timeout=30)
        assert done.state == Saga.STATE_COMPENSATED, done
        # A clean restart (from the snapshot SIGTERM writes) shows the very same saga
        assert coordinator.terminate() == 0
        coordinator.start(port=port)
        async with Client(coordinator.address) as client:
            assert await client.sagas.get(saga.id) == done
        lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        applied = [line["key"] for line in lines if line["applied"]]
        expected = [*forward("create-user", "send-welcome-email"), *undo("send-welcome-email")]
        expected += undo("create-user")
        assert sorted(applied) == sorted(f"{saga.id}:{key}" for key in expected)
        # The held compensation really ran again after the restart, and was not reapplied
        assert records(record, saga.id).count("send-welcome-email:compensate") >= 2
    finally:
        coordinator.stop()


def test_recovery_queues_exactly_the_decided_but_missing_tasks() -> None:
    """The manager alone, fed events as recovery would: decisions whose task never made it
    to the log are queued again by `reconcile`, with the latest round; tasks nobody wants
    any more are cancelled; a snapshot's history rebuilds the same saga."""
    state = CoordinatorState()
    manager = SagaManager(state.tasks)
    state.observers.append(manager)
    ids = iter(range(1, 100))

    def accept(action: PatternAction) -> str:
        assert isinstance(action, SubmitOwned)
        event = events.task_submitted_new(f"t-{next(ids)}")
        copy_common_fields(action.request, event.task_submitted.task)
        event.task_submitted.task.owner.CopyFrom(action.owner)
        state.apply(event)
        return event.task_submitted.task.id

    def end(task_id: str, ok: bool) -> None:
        state.apply(events.task_leased(task_id, f"a-{task_id}", 1, "ag-1"))
        if ok:
            state.apply(events.task_succeeded(task_id, f"a-{task_id}", "ag-1", None))
        else:
            error = task_pb2.TaskError(code="BOOM", message="boom")
            state.apply(events.task_attempt_failed(task_id, f"a-{task_id}", "ag-1", error, True))

    saga = saga_pb2.Saga(id="s-1-1", name="user-onboarding")
    saga.steps.extend(saga_pb2.SagaStep(**step) for step in json.loads(SEED_SAGA)["steps"])
    state.apply(events.saga_created(saga))
    state.apply(events.saga_executed("s-1-1", None, False))
    assert len(manager.take_actions()) == 1  # decided during replay: dropped
    # The first step's task never reached the log: reconcile queues it
    manager.reconcile([])
    (again,) = manager.take_actions()
    assert isinstance(again, SubmitOwned)
    assert (again.request.action, again.owner.part, again.owner.round) == (
        "createUser",
        "create-user",
        1,
    )
    assert again.request.idempotency_key == "s-1-1:create-user:forward"
    first = accept(again)
    manager.reconcile([first])  # it exists and is live: nothing to do
    assert manager.take_actions() == []
    end(first, ok=True)
    end(accept(manager.take_actions()[0]), ok=False)  # send-welcome-email fails
    (undo_user,) = manager.take_actions()
    end(accept(undo_user), ok=False)  # deleteUser fails: COMPENSATION_FAILED
    record = manager.sagas["s-1-1"]
    assert record.run.state.name == "COMPENSATION_FAILED"
    # The retry of the compensation is decided, but its round-2 task is lost
    state.apply(events.saga_compensation_requested("s-1-1", "retry"))
    manager.take_actions()
    manager.reconcile([])
    (retry,) = manager.take_actions()
    assert isinstance(retry, SubmitOwned)
    assert (retry.owner.part, retry.owner.phase, retry.owner.round) == (
        "create-user",
        "compensate",
        2,
    )
    assert retry.request.action == "deleteUser"
    assert retry.request.idempotency_key == "s-1-1:create-user:compensate"
    second_round = accept(retry)
    # A snapshot's history rebuilds the same saga
    rebuilt = SagaManager(state.tasks)
    for event in manager.history():
        rebuilt.observe(event)
    assert rebuilt.to_proto(rebuilt.sagas["s-1-1"]) == manager.to_proto(record)
    # Only the round-2 task moves the saga on
    end(second_round, ok=True)
    assert record.run.state.name == "COMPENSATED"
    # A deleted saga's live task is cancelled, during replay too
    state.apply(events.saga_created(saga_pb2.Saga(id="s-1-2", steps=saga.steps)))
    state.apply(events.saga_executed("s-1-2", None, False))
    live = accept(manager.take_actions()[0])
    state.apply(events.saga_deleted("s-1-2"))
    manager.take_actions()
    manager.reconcile([live])
    (cancel,) = manager.take_actions()
    assert isinstance(cancel, CancelOwned) and cancel.task_id == live
