"""The saga policy: forward steps in order, compensation of completed steps in reverse."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.saga import (
    MAX_STEPS,
    CompensationState,
    IllegalTransition,
    InvalidDefinition,
    Phase,
    RunStep,
    SagaDecision,
    SagaEnded,
    SagaRun,
    SagaState,
    SagaStep,
    StepState,
    validate_saga,
)


def onboarding() -> list[SagaStep]:
    """The seed's user-onboarding saga."""
    return [
        SagaStep(name="create-user", action="createUser", compensate="deleteUser"),
        SagaStep(name="send-welcome-email", action="sendEmail", compensate="markEmailFailed"),
        SagaStep(name="create-trial", action="createTrial", compensate="cancelTrial"),
    ]


def only_step(decisions: list[SagaDecision]) -> RunStep:
    [decision] = decisions
    assert isinstance(decision, RunStep)
    return decision


def only_end(decisions: list[SagaDecision]) -> SagaEnded:
    [decision] = decisions
    assert isinstance(decision, SagaEnded)
    return decision


def test_onboarding_succeeds_in_order_with_earlier_outputs_as_inputs() -> None:
    # Given the onboarding saga
    saga = SagaRun("s1", onboarding())

    # When executed, then create-user runs first with the saga's input
    first = only_step(saga.execute({"email": "ada@example.com"}))
    assert first == RunStep(
        0,
        "create-user",
        Phase.FORWARD,
        "createUser",
        {"input": {"email": "ada@example.com"}, "steps": {}},
        "s1:create-user:forward",
    )
    assert saga.state is SagaState.RUNNING
    assert saga.current_step == "create-user"

    # When each step succeeds, then the next runs with every earlier output
    second = only_step(saga.step_succeeded(0, {"user_id": 7}))
    assert (second.index, second.action) == (1, "sendEmail")
    assert second.input == {
        "input": {"email": "ada@example.com"},
        "steps": {"create-user": {"user_id": 7}},
    }
    third = only_step(saga.step_succeeded(1, {"message_id": "m"}))
    assert third.input["steps"] == {
        "create-user": {"user_id": 7},
        "send-welcome-email": {"message_id": "m"},
    }

    # When the last step succeeds, then the saga ends SUCCEEDED and nothing was compensated
    end = only_end(saga.step_succeeded(2, {"trial": "t"}))
    assert end == SagaEnded(SagaState.SUCCEEDED, "all 3 steps succeeded")
    assert saga.state is SagaState.SUCCEEDED
    assert saga.step_states == (StepState.SUCCEEDED,) * 3
    assert saga.compensation_states == (CompensationState.NOT_NEEDED,) * 3
    assert list(saga.outputs) == ["create-user", "send-welcome-email", "create-trial"]
    assert saga.current_step == ""


def drive(saga: SagaRun, fail_at: int | None) -> list[SagaDecision]:
    """Run forward until `fail_at` fails, then let every compensation succeed."""
    log: list[SagaDecision] = []
    pending: deque[SagaDecision] = deque(saga.execute({}))
    while pending:
        decision = pending.popleft()
        log.append(decision)
        if isinstance(decision, RunStep):
            if decision.phase is Phase.COMPENSATE:
                pending.extend(saga.compensation_succeeded(decision.index))
            elif decision.index == fail_at:
                pending.extend(saga.step_failed(decision.index, "smtp down"))
            else:
                pending.extend(saga.step_succeeded(decision.index, f"out{decision.index}"))
    return log


@pytest.mark.parametrize(
    ("fail_at", "expected_undo", "final"),
    [
        (0, [], SagaState.FAILED),
        (1, ["deleteUser"], SagaState.COMPENSATED),
        (2, ["markEmailFailed", "deleteUser"], SagaState.COMPENSATED),
    ],
)
def test_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse(
    fail_at: int, expected_undo: list[str], final: SagaState
) -> None:
    # Given the onboarding saga
    saga = SagaRun("s1", onboarding())

    # When step `fail_at` fails and every compensation succeeds
    log = drive(saga, fail_at)

    # Then the forward steps up to the failure ran, then exactly the completed ones were undone
    steps = [d for d in log if isinstance(d, RunStep)]
    assert [d.index for d in steps if d.phase is Phase.FORWARD] == list(range(fail_at + 1))
    assert [d.action for d in steps if d.phase is Phase.COMPENSATE] == expected_undo
    # And the saga ended once, naming the failed step and its error
    end = log[-1]
    assert isinstance(end, SagaEnded)
    assert (end.state, end.step, end.error) == (final, onboarding()[fail_at].name, "smtp down")
    assert end.reason.startswith(f"step {onboarding()[fail_at].name} failed: smtp down")
    assert sum(isinstance(d, SagaEnded) for d in log) == 1
    # And the steps after the failure were skipped, the failed one is not compensated
    assert saga.step_states[fail_at] is StepState.FAILED
    assert saga.step_states[fail_at + 1 :] == (StepState.SKIPPED,) * (2 - fail_at)
    assert saga.compensation_states[fail_at:] == (CompensationState.NOT_NEEDED,) * (3 - fail_at)
    assert saga.compensation_states[:fail_at] == (CompensationState.SUCCEEDED,) * fail_at
    assert saga.failed_step == onboarding()[fail_at].name


def test_compensation_input_carries_the_steps_own_output() -> None:
    # Given create-user and send-welcome-email done, create-trial failing
    saga = SagaRun("s1", onboarding())
    saga.execute({"plan": "pro"})
    saga.step_succeeded(0, "u")
    saga.step_succeeded(1, "e")
    # When create-trial fails
    undo = only_step(saga.step_failed(2, "quota"))
    # Then the compensation of send-welcome-email sees its own output and the earlier ones
    assert undo.input == {"input": {"plan": "pro"}, "steps": {"create-user": "u"}, "output": "e"}
    assert undo.idempotency_key == "s1:send-welcome-email:compensate"
    assert saga.state is SagaState.COMPENSATING


def test_steps_without_compensate_are_not_needed_and_skipped() -> None:
    # Given a middle step with nothing to undo
    steps = [
        SagaStep(name="a", action="doA", compensate="undoA"),
        SagaStep(name="b", action="doB"),
        SagaStep(name="c", action="doC", compensate="undoC"),
    ]
    saga = SagaRun("s", steps)
    saga.execute()
    saga.step_succeeded(0, None)
    saga.step_succeeded(1, None)
    # When c fails, then a's compensation runs directly, b is left alone
    assert only_step(saga.step_failed(2, "x")).name == "a"
    assert saga.compensation_states == (
        CompensationState.RUNNING,
        CompensationState.NOT_NEEDED,
        CompensationState.NOT_NEEDED,
    )


def test_failure_with_nothing_to_undo_ends_failed() -> None:
    # Given a first step without a compensate action
    saga = SagaRun("s", [SagaStep(name="a", action="doA"), SagaStep(name="b", action="doB")])
    saga.execute()
    saga.step_succeeded(0, None)
    # When b fails, then the saga ends FAILED at once
    end = only_end(saga.step_failed(1, "nope"))
    assert (end.state, end.step, end.error) == (SagaState.FAILED, "b", "nope")
    # And a later compensate() has nothing to undo: it ends COMPENSATED immediately
    assert only_end(saga.compensate()).state is SagaState.COMPENSATED


def test_compensation_failure_stops_visibly_and_compensate_resumes_there() -> None:
    # Given create-trial failed and the email's compensation is running
    saga = SagaRun("s1", onboarding())
    saga.execute()
    saga.step_succeeded(0, "u")
    saga.step_succeeded(1, "e")
    saga.step_failed(2, "quota")

    # When the email's compensation fails
    end = only_end(saga.compensation_failed(1, "mail api down"))

    # Then the saga ends COMPENSATION_FAILED naming the step, the rest stays PENDING
    assert (end.state, end.step, end.error) == (
        SagaState.COMPENSATION_FAILED,
        "send-welcome-email",
        "mail api down",
    )
    assert "1 more still to do" in end.reason
    assert saga.compensation_states[:2] == (CompensationState.PENDING, CompensationState.FAILED)
    assert saga.compensation_errors[1] == "mail api down"
    assert saga.current_step == ""

    # When the caller asks to compensate again, then it resumes with the failed one
    retry = only_step(saga.compensate())
    assert (retry.name, retry.phase) == ("send-welcome-email", Phase.COMPENSATE)
    assert retry.idempotency_key == "s1:send-welcome-email:compensate"
    assert only_step(saga.compensation_succeeded(1)).name == "create-user"
    final = only_end(saga.compensation_succeeded(0))
    assert (final.state, final.step) == (SagaState.COMPENSATED, "create-trial")
    assert saga.compensation_errors == ("", "", "")


def test_manual_mode_waits_for_compensate() -> None:
    # Given a saga in manual compensation mode
    saga = SagaRun("s1", onboarding(), manual_compensation=True)
    saga.execute()
    saga.step_succeeded(0, "u")

    # When a step fails, then the saga ends FAILED without compensating
    end = only_end(saga.step_failed(1, "bounce"))
    assert (end.state, end.step) == (SagaState.FAILED, "send-welcome-email")
    assert saga.compensation_states[0] is CompensationState.PENDING

    # When the caller compensates, then the completed step is undone
    assert only_step(saga.compensate()).action == "deleteUser"
    assert only_end(saga.compensation_succeeded(0)).state is SagaState.COMPENSATED


def test_on_demand_rollback_of_a_succeeded_saga() -> None:
    # Given a saga that succeeded (the seed's catch block calls compensate anyway)
    saga = SagaRun("s1", onboarding())
    drive(saga, fail_at=None)

    # When compensated, then every step is undone, last first
    undone = [only_step(saga.compensate()).action]
    undone.append(only_step(saga.compensation_succeeded(2)).action)
    undone.append(only_step(saga.compensation_succeeded(1)).action)
    end = only_end(saga.compensation_succeeded(0))
    assert undone == ["cancelTrial", "markEmailFailed", "deleteUser"]
    assert end == SagaEnded(
        SagaState.COMPENSATED, "rolled back on request; every step was compensated"
    )

    # And compensating again is a harmless no-op
    assert saga.compensate() == []
    assert saga.state is SagaState.COMPENSATED


def test_compensate_before_execute_cancels() -> None:
    saga = SagaRun("s1", onboarding())
    end = only_end(saga.compensate())
    assert end.state is SagaState.CANCELLED
    assert saga.step_states == (StepState.SKIPPED,) * 3
    assert saga.compensate() == []
    with pytest.raises(IllegalTransition):
        saga.execute()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.step_succeeded(0, None),  # not executed
        lambda s: (s.execute(), s.execute()),  # executed twice
        lambda s: (s.execute(), s.step_succeeded(1, None)),  # not the running step
        lambda s: (s.execute(), s.step_failed(5, "x")),  # no such step
        lambda s: (s.execute(), s.compensation_succeeded(0)),  # nothing compensating
        lambda s: (s.execute(), s.compensate()),  # still running
        lambda s: (s.execute(), s.step_succeeded(0, 1), s.step_failed(1, "x"), s.compensate()),
    ],
    ids=[
        "before-execute",
        "execute-twice",
        "wrong-step",
        "no-such-step",
        "not-compensating",
        "compensate-while-running",
        "compensate-while-compensating",
    ],
)
def test_illegal_calls_raise_illegal_transition(call: object) -> None:
    saga = SagaRun("s1", onboarding())
    with pytest.raises(IllegalTransition):
        call(saga)  # type: ignore[operator]


def test_idempotency_keys_are_stable_and_distinct_per_step_and_phase() -> None:
    # Given two runs of the same saga id, one rolled back on request
    keys: list[str] = []
    for _ in range(2):
        saga = SagaRun("saga-42", onboarding())
        log = drive(saga, fail_at=None)
        log += drive_compensation(saga)
        keys.append(",".join(d.idempotency_key for d in log if isinstance(d, RunStep)))
    # Then both runs produced the same keys, and within a run every key is distinct
    assert keys[0] == keys[1]
    one_run = keys[0].split(",")
    assert len(one_run) == len(set(one_run)) == 6
    assert "saga-42:create-trial:compensate" in one_run


def drive_compensation(saga: SagaRun) -> list[SagaDecision]:
    log: list[SagaDecision] = []
    pending: deque[SagaDecision] = deque(saga.compensate())
    while pending:
        decision = pending.popleft()
        log.append(decision)
        if isinstance(decision, RunStep):
            pending.extend(saga.compensation_succeeded(decision.index))
    return log


# Validation.


def test_onboarding_is_valid() -> None:
    assert validate_saga(onboarding()) == []


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], ["steps"]),
        ([SagaStep(name="", action="a")], ["steps[0].name"]),
        ([SagaStep(name="a", action=" ")], ["steps[0].action"]),
        ([SagaStep(name="a", action="x"), SagaStep(name="a", action="y")], ["steps[1].name"]),
        ([SagaStep(name=f"s{i}", action="x") for i in range(MAX_STEPS + 1)], ["steps[100]"]),
    ],
    ids=["empty", "no-name", "no-action", "duplicate-name", "too-many"],
)
def test_invalid_sagas_are_rejected(steps: list[SagaStep], expected: list[str]) -> None:
    assert [v.path for v in validate_saga(steps)] == expected
    with pytest.raises(InvalidDefinition):
        SagaRun("s", steps)


def test_limits_and_optional_compensate_are_accepted() -> None:
    steps = [SagaStep(name=f"s{i}", action="x") for i in range(MAX_STEPS)]
    assert validate_saga(steps) == []
    with pytest.raises(ValueError):
        SagaRun("", steps)


# The property: random sagas, failures and compensation failures against a reference.


@st.composite
def saga_cases(
    draw: st.DrawFn,
) -> tuple[list[bool], int | None, set[int], bool, bool]:
    size = draw(st.integers(1, 8))
    has_undo = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    fail_at = draw(st.none() | st.integers(0, size - 1))
    undo_fails = draw(st.sets(st.integers(0, size - 1)))
    manual = draw(st.booleans())
    on_demand = draw(st.booleans())
    return has_undo, fail_at, undo_fails, manual, on_demand


def reference(
    has_undo: list[bool], fail_at: int | None, undo_fails: set[int], manual: bool, on_demand: bool
) -> tuple[list[int], list[int], list[SagaState]]:
    """Forward indexes, compensation indexes and resting states a correct saga produces.

    The driver retries a failed compensation once through compensate(), asks for
    compensate() after a manual-mode failure, and after any other resting FAILED or
    SUCCEEDED when `on_demand` is set.
    """
    size = len(has_undo)
    forward = list(range(size if fail_at is None else fail_at + 1))
    completed = range(size if fail_at is None else fail_at)
    to_undo = [i for i in reversed(completed) if has_undo[i]]
    rests: list[SagaState] = []
    if fail_at is None:
        rests.append(SagaState.SUCCEEDED)
        rollback = on_demand
    elif manual or not to_undo:
        rests.append(SagaState.FAILED)
        rollback = manual or on_demand
    else:
        rollback = True
    undo: list[int] = []
    if rollback:
        for i in to_undo:
            undo.append(i)
            if i in undo_fails:
                rests.append(SagaState.COMPENSATION_FAILED)
                undo.append(i)
        rests.append(SagaState.COMPENSATED)
    return forward, undo, rests


@settings(max_examples=400, deadline=None)
@given(case=saga_cases())
def test_any_saga_ends_as_the_reference_predicts(
    case: tuple[list[bool], int | None, set[int], bool, bool],
) -> None:
    # Given a random saga, a failing step (or none) and compensations that fail once
    has_undo, fail_at, undo_fails, manual, on_demand = case
    steps = [
        SagaStep(name=f"step{i}", action=f"do{i}", compensate=f"undo{i}" if undo else "")
        for i, undo in enumerate(has_undo)
    ]
    saga = SagaRun("h", steps, manual_compensation=manual)
    forward: list[int] = []
    undo: list[int] = []
    rests: list[SagaState] = []
    failed_once: set[int] = set()
    asked = False

    # When it is driven to rest, the driver reacting like a patient operator
    pending: deque[SagaDecision] = deque(saga.execute({"k": "v"}))
    while pending:
        assert len(pending) == 1, "one decision at a time: a single task in flight"
        decision = pending.popleft()
        if isinstance(decision, RunStep):
            i = decision.index
            assert decision.idempotency_key == f"h:step{i}:{decision.phase.value}"
            assert decision.input["input"] == {"k": "v"}
            assert decision.input["steps"] == {f"step{j}": f"out{j}" for j in range(i)}
            if decision.phase is Phase.FORWARD:
                forward.append(i)
                if i == fail_at:
                    pending.extend(saga.step_failed(i, "boom"))
                else:
                    pending.extend(saga.step_succeeded(i, f"out{i}"))
            else:
                undo.append(i)
                assert decision.action == f"undo{i}"
                assert decision.input["output"] == f"out{i}"
                if i in undo_fails and i not in failed_once:
                    failed_once.add(i)
                    pending.extend(saga.compensation_failed(i, "undo broke"))
                else:
                    pending.extend(saga.compensation_succeeded(i))
        else:
            rests.append(decision.state)
            assert saga.state is decision.state
            if decision.state is SagaState.COMPENSATION_FAILED:
                # Then nothing is silently half done: what is left is visibly PENDING
                assert decision.step == f"step{undo[-1]}"
                left = [
                    j
                    for j in range(undo[-1])
                    if saga.compensation_states[j] is CompensationState.PENDING
                ]
                assert left == [j for j in range(undo[-1]) if has_undo[j] and j not in undo]
                pending.extend(saga.compensate())
            elif decision.state is SagaState.FAILED and manual:
                pending.extend(saga.compensate())
            elif decision.state in (SagaState.FAILED, SagaState.SUCCEEDED) and on_demand:
                assert not asked
                asked = True
                pending.extend(saga.compensate())

    # Then forward runs, compensations and resting states match the reference
    expected_forward, expected_undo, expected_rests = reference(
        has_undo, fail_at, undo_fails, manual, on_demand
    )
    assert forward == expected_forward
    assert undo == expected_undo
    assert rests == expected_rests
    # And a rollback undoes exactly the completed steps with an undo action, in reverse
    if SagaState.COMPENSATED in rests:
        completed = [i for i in expected_forward if i != fail_at]
        assert list(dict.fromkeys(undo)) == [i for i in reversed(completed) if has_undo[i]]
        assert all(
            state in (CompensationState.SUCCEEDED, CompensationState.NOT_NEEDED)
            for state in saga.compensation_states
        )
        # And asking again is a no-op
        assert saga.compensate() == []
    else:
        assert undo == []
