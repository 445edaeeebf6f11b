"""Workflow policy: which stage runs next, and what is undone after a failure.

A workflow is a list of stages run one after another; each stage runs through a pattern
(a convoy, a swarm or a saga) and hands its output to the next. With the "saga"
transaction pattern, a failed stage makes the stages that finished before it undo their
work, last first, the way a saga compensates its steps.

This module only decides; the coordinator carries the decisions out and reports back
what happened. The whole state of a run is the phase of each stage and of each stage's
undo, so it can be rebuilt from the workflow as stored after a restart and the next
decision is the same as before the restart.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

PATTERNS = ("convoy", "swarm", "saga")


class Phase(enum.Enum):
    """Where one stage is."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


class Undo(enum.Enum):
    """Where the undoing of one finished stage is; NONE when it has nothing to undo or
    nothing asked for it."""

    NONE = "none"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StageSpec:
    """What the policy needs of a stage's definition."""

    name: str
    pattern: str
    agents: int = 0
    min_agents: int = 0
    max_agents: int = 0
    compensate: str = ""

    @property
    def undoable(self) -> bool:
        """A saga stage undoes its own steps; another stage needs a compensating action."""
        return self.pattern == "saga" or bool(self.compensate)


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem with a workflow definition: the field path and what is wrong."""

    path: str
    description: str


def validate(stages: Sequence[StageSpec]) -> list[Violation]:
    """Every problem with a list of stages; empty when the workflow can run."""
    found: list[Violation] = []
    if not stages:
        found.append(Violation("stages", "a workflow needs at least one stage"))
    seen: set[str] = set()
    for index, stage in enumerate(stages):
        path = f"stages[{index}]"
        if stage.name in seen:
            found.append(Violation(f"{path}.name", f"stage name {stage.name!r} is used twice"))
        seen.add(stage.name)
        if stage.pattern not in PATTERNS:
            found.append(
                Violation(f"{path}.pattern", f"{stage.pattern!r} is not one of {PATTERNS}")
            )
        if stage.pattern == "swarm":
            if stage.agents:
                found.append(
                    Violation(f"{path}.agents", "a swarm stage is sized by minAgents/maxAgents")
                )
            if stage.max_agents and stage.min_agents > stage.max_agents:
                found.append(
                    Violation(
                        f"{path}.min_agents",
                        f"minAgents {stage.min_agents} is above maxAgents {stage.max_agents}",
                    )
                )
            if max(stage.min_agents, stage.max_agents) < 1:
                found.append(
                    Violation(f"{path}.max_agents", "a swarm stage needs at least one agent")
                )
        elif stage.min_agents or stage.max_agents:
            found.append(
                Violation(
                    f"{path}.min_agents" if stage.min_agents else f"{path}.max_agents",
                    f"minAgents/maxAgents size a swarm stage, not a {stage.pattern} stage",
                )
            )
    return found


@dataclass(frozen=True, slots=True)
class RunStage:
    """Start this stage."""

    index: int


@dataclass(frozen=True, slots=True)
class UndoStage:
    """Undo this finished stage."""

    index: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The workflow has ended in this phase."""

    phase: Phase


@dataclass(frozen=True, slots=True)
class Wait:
    """Something runs; nothing to decide until it ends."""


Step = RunStage | UndoStage | Finish | Wait


def next_step(
    stages: Sequence[StageSpec],
    phases: Sequence[Phase],
    undos: Sequence[Undo],
    transaction: bool,
) -> Step:
    """The one thing to do next.

    Args:
        stages: the definition, in order.
        phases: each stage's phase.
        undos: each stage's undo phase.
        transaction: whether finished stages are undone after a failure ("saga").
    """
    if any(phase is Phase.RUNNING for phase in phases) or any(
        undo is Undo.RUNNING for undo in undos
    ):
        return Wait()
    broken = next(
        (i for i, phase in enumerate(phases) if phase in (Phase.FAILED, Phase.CANCELLED)), None
    )
    if broken is None:
        pending = next((i for i, phase in enumerate(phases) if phase is Phase.PENDING), None)
        return Finish(Phase.SUCCEEDED) if pending is None else RunStage(pending)
    if transaction and phases[broken] is Phase.FAILED:
        for index in reversed(range(broken)):
            if undos[index] is Undo.PENDING:
                return UndoStage(index)
    return Finish(phases[broken])


def after_failure(
    stages: Sequence[StageSpec], phases: Sequence[Phase], transaction: bool
) -> tuple[list[Phase], list[Undo]]:
    """What a stage's failure or cancellation changes: the stages after it will never
    run (CANCELLED), and with a transaction every finished stage that can be undone is
    marked for undoing.

    Returns:
        The new phases and undo phases (undo phases of untouched stages are NONE).
    """
    broken = next(i for i, phase in enumerate(phases) if phase in (Phase.FAILED, Phase.CANCELLED))
    new_phases = [
        Phase.CANCELLED if i > broken and phase is Phase.PENDING else phase
        for i, phase in enumerate(phases)
    ]
    undo_wanted = transaction and phases[broken] is Phase.FAILED
    undos = [
        Undo.PENDING
        if undo_wanted and i < broken and phase is Phase.SUCCEEDED and stages[i].undoable
        else Undo.NONE
        for i, phase in enumerate(new_phases)
    ]
    return new_phases, undos


def overall_undo(undos: Sequence[Undo]) -> Undo:
    """The workflow's undo phase from its stages': FAILED if any undo failed, else
    RUNNING/PENDING while any is unfinished, SUCCEEDED once all are done, NONE if
    nothing had to be undone."""
    wanted = [undo for undo in undos if undo is not Undo.NONE]
    if not wanted:
        return Undo.NONE
    if any(undo in (Undo.PENDING, Undo.RUNNING) for undo in wanted):
        return Undo.RUNNING
    if any(undo is Undo.FAILED for undo in wanted):
        return Undo.FAILED
    return Undo.SUCCEEDED
