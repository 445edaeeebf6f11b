"""The workflow policy: stage order, what a failure cancels, and undo in reverse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from godel_grpc.patterns.workflow import (
    Finish,
    Phase,
    RunStage,
    StageSpec,
    Undo,
    UndoStage,
    Wait,
    after_failure,
    next_step,
    overall_undo,
    validate,
)

SEED_STAGES = [
    StageSpec("design", "convoy", agents=2),
    StageSpec("implement", "swarm", min_agents=3, max_agents=10),
    StageSpec("verify", "saga", agents=2),
]


def test_the_seed_workflow_is_valid() -> None:
    assert validate(SEED_STAGES) == []


def test_malformed_workflows_name_each_problem() -> None:
    found = validate(
        [
            StageSpec("a", "convoy", min_agents=2),
            StageSpec("a", "swarm", min_agents=5, max_agents=3),
            StageSpec("b", "swarm", agents=2, max_agents=1),
            StageSpec("c", "swarm"),
            StageSpec("d", "pipeline"),
        ]
    )
    paths = [v.path for v in found]
    assert paths == [
        "stages[0].min_agents",
        "stages[1].name",
        "stages[1].min_agents",
        "stages[2].agents",
        "stages[3].max_agents",
        "stages[4].pattern",
    ]
    assert validate([])[0].path == "stages"


def test_stages_run_in_order_and_the_workflow_succeeds_when_all_do() -> None:
    phases = [Phase.PENDING] * 3
    undos = [Undo.NONE] * 3
    for index in range(3):
        assert next_step(SEED_STAGES, phases, undos, True) == RunStage(index)
        phases[index] = Phase.RUNNING
        assert next_step(SEED_STAGES, phases, undos, True) == Wait()
        phases[index] = Phase.SUCCEEDED
    assert next_step(SEED_STAGES, phases, undos, True) == Finish(Phase.SUCCEEDED)


def test_a_failed_stage_cancels_the_rest_and_undoes_finished_stages_last_first() -> None:
    stages = [
        StageSpec("a", "convoy", compensate="undo-a"),
        StageSpec("b", "convoy"),  # nothing to undo
        StageSpec("c", "saga"),  # a saga undoes its own steps
        StageSpec("d", "convoy", compensate="undo-d"),
        StageSpec("e", "convoy", compensate="undo-e"),
    ]
    phases = [Phase.SUCCEEDED, Phase.SUCCEEDED, Phase.SUCCEEDED, Phase.FAILED, Phase.PENDING]
    phases, undos = after_failure(stages, phases, transaction=True)
    assert phases[4] is Phase.CANCELLED
    assert undos == [Undo.PENDING, Undo.NONE, Undo.PENDING, Undo.NONE, Undo.NONE]
    assert next_step(stages, phases, undos, True) == UndoStage(2)
    undos[2] = Undo.RUNNING
    assert next_step(stages, phases, undos, True) == Wait()
    assert overall_undo(undos) is Undo.RUNNING
    undos[2] = Undo.FAILED  # a failed undo does not stop the others
    assert next_step(stages, phases, undos, True) == UndoStage(0)
    undos[0] = Undo.SUCCEEDED
    assert next_step(stages, phases, undos, True) == Finish(Phase.FAILED)
    assert overall_undo(undos) is Undo.FAILED


def test_without_a_transaction_or_after_a_cancellation_nothing_is_undone() -> None:
    stages = [StageSpec("a", "convoy", compensate="undo-a"), StageSpec("b", "convoy")]
    for phase, transaction in ((Phase.FAILED, False), (Phase.CANCELLED, True)):
        phases, undos = after_failure(stages, [Phase.SUCCEEDED, phase], transaction)
        assert undos == [Undo.NONE, Undo.NONE]
        assert next_step(stages, phases, undos, transaction) == Finish(phase)
        assert overall_undo(undos) is Undo.NONE


@given(
    count=st.integers(min_value=1, max_value=8),
    undoable=st.lists(st.booleans(), min_size=8, max_size=8),
    outcomes=st.lists(
        st.sampled_from([Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED]), min_size=8, max_size=8
    ),
    undo_ok=st.lists(st.booleans(), min_size=8, max_size=8),
    transaction=st.booleans(),
)
def test_any_run_matches_a_reference_model(
    count: int,
    undoable: list[bool],
    outcomes: list[Phase],
    undo_ok: list[bool],
    transaction: bool,
) -> None:
    """Drives the policy with random stage outcomes and checks it against the obvious
    model: stages run in order up to the first that does not succeed; after a failure
    with a transaction, exactly the finished undoable stages are undone, last first."""
    stages = [
        StageSpec(f"s{i}", "convoy", compensate="undo" if undoable[i] else "") for i in range(count)
    ]
    phases = [Phase.PENDING] * count
    undos = [Undo.NONE] * count
    ran: list[int] = []
    undone: list[int] = []
    for _ in range(4 * count + 2):
        step = next_step(stages, phases, undos, transaction)
        if isinstance(step, Finish):
            break
        if isinstance(step, RunStage):
            ran.append(step.index)
            phases[step.index] = outcomes[step.index]
            if phases[step.index] is not Phase.SUCCEEDED:
                phases, undos = after_failure(stages, phases, transaction)
        elif isinstance(step, UndoStage):
            undone.append(step.index)
            undos[step.index] = Undo.SUCCEEDED if undo_ok[step.index] else Undo.FAILED
        else:
            raise AssertionError(f"nothing runs, yet the policy waits: {step}")
    else:
        raise AssertionError("the policy never finished")
    broken = next((i for i in range(count) if outcomes[i] is not Phase.SUCCEEDED), None)
    assert ran == list(range(count if broken is None else broken + 1))
    if broken is None:
        assert step == Finish(Phase.SUCCEEDED) and undone == []
        return
    assert step == Finish(outcomes[broken])
    assert all(phase is Phase.CANCELLED for phase in phases[broken + 1 :])
    expected = (
        [i for i in reversed(range(broken)) if undoable[i]]
        if transaction and outcomes[broken] is Phase.FAILED
        else []
    )
    assert undone == expected
