"""Saga policy: ordered steps, and compensation of the completed ones when one fails.

A saga runs its steps forward one at a time. When a step fails (after the task layer
gave up retrying it), the steps that completed are undone by their `compensate`
actions, last completed first, again one at a time. Only the caller's `compensate()`
rolls back a saga that succeeded (the seed's ``try { execute } catch { compensate }``).

The outcomes, as `SagaEnded` decisions:

- SUCCEEDED: every step succeeded.
- COMPENSATED: a rollback ran to the end; after a failure the reason names the step.
- FAILED: a step failed and nothing needed undoing (no completed step had a compensate
  action), or the saga runs with `manual_compensation` and waits for `compensate()`.
- COMPENSATION_FAILED: a compensation failed; the ones still to do stay PENDING and
  `compensate()` resumes with the one that failed. Never silently half done.
- CANCELLED: `compensate()` before `execute()`: nothing ever ran.

SUCCEEDED, FAILED and COMPENSATION_FAILED are resting states rather than final ones,
since `compensate()` may follow, so a run can emit more than one `SagaEnded`: one each
time it comes to rest. Like the convoy, every method is deterministic: replaying the
recorded calls on a fresh run rebuilds the same state, forward or mid-compensation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from godel_grpc.patterns.convoy import IllegalTransition, InvalidDefinition, Violation

__all__ = [
    "MAX_STEPS",
    "CompensationState",
    "IllegalTransition",
    "InvalidDefinition",
    "Phase",
    "RunStep",
    "SagaDecision",
    "SagaEnded",
    "SagaRun",
    "SagaState",
    "SagaStep",
    "StepState",
    "Violation",
    "validate_saga",
]

MAX_STEPS = 100
"""Largest saga accepted; a longer transaction is better split into stages."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaStep:
    """One step as defined at create.

    Attributes:
        name: unique within the saga; part of the idempotency keys.
        action: the action that does the work (routes to agents declaring it).
        compensate: the action that undoes it; empty when there is nothing to undo.
    """

    name: str
    action: str
    compensate: str = ""


class SagaState(enum.Enum):
    """Where the saga stands. Names match `Saga.State` without its prefix."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
    CANCELLED = "CANCELLED"


class StepState(enum.Enum):
    """Forward state of one step. SKIPPED is `SagaStep.State.STATE_CANCELLED` in the API."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class CompensationState(enum.Enum):
    """Undo state of one step.

    NOT_NEEDED covers both "never asked" and "nothing to undo" (no compensate action);
    the API shows the first as UNSPECIFIED and the second as SUCCEEDED.
    """

    NOT_NEEDED = "NOT_NEEDED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class Phase(enum.StrEnum):
    """Which way a step runs; also the last part of its idempotency key."""

    FORWARD = "forward"
    COMPENSATE = "compensate"


@dataclass(frozen=True, slots=True)
class RunStep:
    """Submit one task for a step: its action, or its compensation.

    Attributes:
        index: the step's position.
        name: the step's name.
        phase: forward or compensate.
        action: the action to route the task to.
        input: ``{"input": saga input, "steps": {earlier step: output}}``; a compensation
            also gets ``"output"``, the output of the step it undoes.
        idempotency_key: ``<saga id>:<step>:<phase>``, the same on every retry and after a
            restart, so an agent can recognise work it has already done.
    """

    index: int
    name: str
    phase: Phase
    action: str
    input: Mapping[str, object]
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class SagaEnded:
    """The saga came to rest in a terminal (or resting) state.

    Attributes:
        state: the state it came to.
        reason: a sentence for the caller.
        step: the failed step (forward failure, or the compensation that failed), if any.
        error: that step's error, if any.
    """

    state: SagaState
    reason: str
    step: str = ""
    error: str = ""


SagaDecision = RunStep | SagaEnded


def validate_saga(steps: Sequence[SagaStep]) -> list[Violation]:
    """Every structural problem of a saga definition, in step order.

    Args:
        steps: the steps in execution order.

    Returns:
        The violations found, each path naming the step; empty means the saga can run.
    """
    if not steps:
        return [Violation("steps", "a saga needs at least one step")]
    if len(steps) > MAX_STEPS:
        return [
            Violation(
                f"steps[{MAX_STEPS}]",
                f"a saga has at most {MAX_STEPS} steps; this one has {len(steps)}",
            )
        ]
    found: list[Violation] = []
    index_of: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not step.name.strip():
            found.append(Violation(f"steps[{i}].name", "required: a name unique in the saga"))
        elif step.name in index_of:
            found.append(
                Violation(
                    f"steps[{i}].name",
                    f"step name {step.name!r} is already used by steps[{index_of[step.name]}]",
                )
            )
        else:
            index_of[step.name] = i
        if not step.action.strip():
            found.append(Violation(f"steps[{i}].action", "required: the action that does the step"))
    return found


@dataclass(slots=True)
class _Progress:
    """Mutable bookkeeping of one step."""

    forward: StepState = StepState.PENDING
    undo: CompensationState = CompensationState.NOT_NEEDED
    output: object = None
    error: str = ""
    undo_error: str = ""
    has_output: bool = False


class SagaRun:
    """One execution of a validated saga: step outcomes in, decisions out.

    Exactly one task is in flight at any time. Illegal calls raise `IllegalTransition`
    and change nothing.
    """

    def __init__(
        self, saga_id: str, steps: Sequence[SagaStep], *, manual_compensation: bool = False
    ) -> None:
        """Check the definition; every step starts PENDING.

        Args:
            saga_id: the saga's id; it prefixes every idempotency key.
            steps: the steps in execution order.
            manual_compensation: when set, a failed step leaves the saga FAILED until
                the caller asks for `compensate()`, instead of rolling back at once.

        Raises:
            ValueError: `saga_id` is empty.
            InvalidDefinition: when `validate_saga` finds anything.
        """
        if not saga_id:
            raise ValueError("saga_id is required: it prefixes the idempotency keys")
        violations = validate_saga(steps)
        if violations:
            raise InvalidDefinition(violations)
        self._id = saga_id
        self._steps = tuple(steps)
        self._manual = manual_compensation
        self._progress = [_Progress() for _ in self._steps]
        self._state = SagaState.PENDING
        self._input: Mapping[str, object] = MappingProxyType({})
        self._failed: int | None = None
        self._current: int | None = None
        self._last_end: SagaEnded | None = None

    # Read-only views.

    @property
    def saga_id(self) -> str:
        """The id the idempotency keys are built from."""
        return self._id

    @property
    def steps(self) -> tuple[SagaStep, ...]:
        """The definition, in execution order."""
        return self._steps

    @property
    def manual_compensation(self) -> bool:
        """Whether a failure waits for `compensate()` instead of rolling back."""
        return self._manual

    @property
    def state(self) -> SagaState:
        """The saga's lifecycle state."""
        return self._state

    @property
    def input(self) -> Mapping[str, object]:
        """The input given to `execute()`; empty before."""
        return self._input

    @property
    def step_states(self) -> tuple[StepState, ...]:
        """Forward state of each step, by index."""
        return tuple(p.forward for p in self._progress)

    @property
    def compensation_states(self) -> tuple[CompensationState, ...]:
        """Compensation state of each step, by index."""
        return tuple(p.undo for p in self._progress)

    @property
    def outputs(self) -> Mapping[str, object]:
        """Outputs of the steps that succeeded, by name, in step order."""
        return MappingProxyType(
            {
                s.name: p.output
                for s, p in zip(self._steps, self._progress, strict=True)
                if p.has_output
            }
        )

    @property
    def step_errors(self) -> tuple[str, ...]:
        """Forward error of each step, by index; empty unless it failed."""
        return tuple(p.error for p in self._progress)

    @property
    def compensation_errors(self) -> tuple[str, ...]:
        """Error of each step's last failed compensation, by index; empty otherwise."""
        return tuple(p.undo_error for p in self._progress)

    @property
    def current_step(self) -> str:
        """The step whose task is in flight (either phase); empty when nothing runs."""
        return "" if self._current is None else self._steps[self._current].name

    @property
    def failed_step(self) -> str:
        """The step whose action failed; empty if none did."""
        return "" if self._failed is None else self._steps[self._failed].name

    @property
    def last_end(self) -> SagaEnded | None:
        """The most recent `SagaEnded`, or None if the saga never came to rest."""
        return self._last_end

    # Transitions.

    def execute(self, input: Mapping[str, object] | None = None) -> list[SagaDecision]:
        """Start the saga: run the first step.

        Args:
            input: the saga's input, passed to every step; None means empty.

        Raises:
            IllegalTransition: the saga is not PENDING.
        """
        if self._state is not SagaState.PENDING:
            raise IllegalTransition(
                f"the saga is {self._state.name}; only a PENDING saga can be executed",
                subject="saga",
            )
        self._input = MappingProxyType(dict(input or {}))
        self._state = SagaState.RUNNING
        return [self._run_forward(0)]

    def step_succeeded(self, index: int, output: object) -> list[SagaDecision]:
        """Record a step's success; run the next step, or end SUCCEEDED after the last.

        Raises:
            IllegalTransition: the step's action is not the one running.
        """
        progress = self._require(index, Phase.FORWARD)
        progress.forward = StepState.SUCCEEDED
        progress.output = output
        progress.has_output = True
        self._current = None
        if index + 1 < len(self._steps):
            return [self._run_forward(index + 1)]
        return [self._end(SagaState.SUCCEEDED, f"all {len(self._steps)} steps succeeded")]

    def step_failed(self, index: int, error: str) -> list[SagaDecision]:
        """Record a step's failure (retries exhausted) and start the rollback.

        The completed steps with a compensate action become PENDING compensations and
        the last of them runs; the steps after the failed one are SKIPPED. The failed
        step itself is not compensated: its action did not complete. With nothing to
        compensate, or in manual mode, the saga ends FAILED.

        Raises:
            IllegalTransition: the step's action is not the one running.
        """
        progress = self._require(index, Phase.FORWARD)
        progress.forward = StepState.FAILED
        progress.error = error
        self._current = None
        self._failed = index
        for later in self._progress[index + 1 :]:
            later.forward = StepState.SKIPPED
        for step, done in zip(self._steps[:index], self._progress[:index], strict=True):
            if step.compensate:
                done.undo = CompensationState.PENDING
        failure = f"step {self._steps[index].name} failed: {error}"
        if self._manual:
            return [self._end(SagaState.FAILED, f"{failure}; waiting for compensate()")]
        following = self._next_compensation()
        if following is None:
            return [self._end(SagaState.FAILED, f"{failure}; no completed step to compensate")]
        self._state = SagaState.COMPENSATING
        return [self._run_compensation(following)]

    def compensation_succeeded(self, index: int) -> list[SagaDecision]:
        """Record an undone step; run the next compensation, or end COMPENSATED.

        Raises:
            IllegalTransition: the step's compensation is not the one running.
        """
        progress = self._require(index, Phase.COMPENSATE)
        progress.undo = CompensationState.SUCCEEDED
        progress.undo_error = ""
        self._current = None
        following = self._next_compensation()
        if following is not None:
            return [self._run_compensation(following)]
        if self._failed is None:
            reason = "rolled back on request; every step was compensated"
        else:
            failed = self._progress[self._failed]
            reason = (
                f"step {self._steps[self._failed].name} failed: {failed.error}; "
                "every completed step was compensated"
            )
        return [self._end(SagaState.COMPENSATED, reason)]

    def compensation_failed(self, index: int, error: str) -> list[SagaDecision]:
        """Record a failed compensation (retries exhausted): the saga needs attention.

        The compensations still to do stay PENDING; `compensate()` resumes here.

        Raises:
            IllegalTransition: the step's compensation is not the one running.
        """
        progress = self._require(index, Phase.COMPENSATE)
        progress.undo = CompensationState.FAILED
        progress.undo_error = error
        self._current = None
        name = self._steps[index].name
        left = sum(p.undo is CompensationState.PENDING for p in self._progress)
        reason = f"compensation of step {name} failed: {error}; {left} more still to do"
        return [self._end(SagaState.COMPENSATION_FAILED, reason, step=name, error=error)]

    def compensate(self) -> list[SagaDecision]:
        """Roll the saga back on the caller's request.

        - PENDING: nothing ran; the saga ends CANCELLED and its steps are SKIPPED.
        - SUCCEEDED: every step with a compensate action is undone, last first.
        - FAILED: the completed steps are undone (manual mode's way forward).
        - COMPENSATION_FAILED: resumes with the compensation that failed.
        - COMPENSATED, CANCELLED: nothing is left to undo; returns no decision, so the
          seed's ``catch { compensate() }`` after an automatic rollback is harmless.

        When nothing needs undoing the saga ends COMPENSATED at once.

        Raises:
            IllegalTransition: the saga is RUNNING or already COMPENSATING.
        """
        state = self._state
        if state in (SagaState.COMPENSATED, SagaState.CANCELLED):
            return []
        if state is SagaState.PENDING:
            for progress in self._progress:
                progress.forward = StepState.SKIPPED
            return [
                self._end(SagaState.CANCELLED, "compensated before it was executed; nothing ran")
            ]
        if state is SagaState.SUCCEEDED:
            for step, progress in zip(self._steps, self._progress, strict=True):
                if step.compensate:
                    progress.undo = CompensationState.PENDING
        elif state is SagaState.COMPENSATION_FAILED:
            for progress in self._progress:
                if progress.undo is CompensationState.FAILED:
                    progress.undo = CompensationState.PENDING
        elif state is not SagaState.FAILED:
            raise IllegalTransition(
                f"the saga is {state.name}; wait until it comes to rest before compensating",
                subject="saga",
            )
        following = self._next_compensation()
        if following is None:
            reason = "rolled back on request; no step had anything to undo"
            return [self._end(SagaState.COMPENSATED, reason)]
        self._state = SagaState.COMPENSATING
        return [self._run_compensation(following)]

    # Internals.

    def _require(self, index: int, phase: Phase) -> _Progress:
        if not 0 <= index < len(self._steps):
            raise IllegalTransition(f"the saga has no step {index}", subject=f"step {index}")
        name = self._steps[index].name
        running = (
            self._state is SagaState.RUNNING
            if phase is Phase.FORWARD
            else self._state is SagaState.COMPENSATING
        )
        if not running or self._current != index:
            what = "action" if phase is Phase.FORWARD else "compensation"
            raise IllegalTransition(
                f"the {what} of step {name} is not running (the saga is {self._state.name})",
                subject=f"step {name}",
            )
        return self._progress[index]

    def _next_compensation(self) -> int | None:
        """The last step still waiting to be undone: rollback goes in reverse."""
        for index in range(len(self._steps) - 1, -1, -1):
            if self._progress[index].undo is CompensationState.PENDING:
                return index
        return None

    def _earlier_outputs(self, index: int) -> dict[str, object]:
        return {
            step.name: progress.output
            for step, progress in zip(self._steps[:index], self._progress[:index], strict=True)
            if progress.has_output
        }

    def _run_forward(self, index: int) -> RunStep:
        step = self._steps[index]
        self._progress[index].forward = StepState.RUNNING
        self._current = index
        payload: dict[str, object] = {
            "input": dict(self._input),
            "steps": self._earlier_outputs(index),
        }
        return RunStep(
            index, step.name, Phase.FORWARD, step.action, payload, self._key(step, Phase.FORWARD)
        )

    def _run_compensation(self, index: int) -> RunStep:
        step = self._steps[index]
        progress = self._progress[index]
        progress.undo = CompensationState.RUNNING
        self._current = index
        payload: dict[str, object] = {
            "input": dict(self._input),
            "steps": self._earlier_outputs(index),
            "output": progress.output,
        }
        key = self._key(step, Phase.COMPENSATE)
        return RunStep(index, step.name, Phase.COMPENSATE, step.compensate, payload, key)

    def _key(self, step: SagaStep, phase: Phase) -> str:
        return f"{self._id}:{step.name}:{phase.value}"

    def _end(self, state: SagaState, reason: str, *, step: str = "", error: str = "") -> SagaEnded:
        if not step and self._failed is not None:
            step = self._steps[self._failed].name
            error = self._progress[self._failed].error
        self._state = state
        self._last_end = SagaEnded(state, reason, step, error)
        return self._last_end
