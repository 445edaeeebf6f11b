"""Convoy policy: a graph of role→task nodes, each run once everything it needs succeeded.

The seed's convoy (architect → backend, frontend → tester → reviewer) is a DAG. This
module checks such a graph (`validate_convoy`) and drives one run of it (`ConvoyRun`): the
caller reports node outcomes, the run answers with decisions (dispatch this node, cancel
that one, the convoy ended). It never touches streams, tasks or storage, so the service
turns decisions into tasks and events and the rules stay testable on their own.

Rebuilding after a restart: every method of `ConvoyRun` is deterministic (decisions come
out in the order the nodes were defined), so applying the same calls with the same
arguments to a fresh run rebuilds the same state and returns the same decisions. The
service keeps its own events (start, node outcomes, cancel) and replays them as calls;
there is no separate replay format to keep in step.

`Violation`, `IllegalTransition` and `InvalidDefinition` are shared with the saga policy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "MAX_NODES",
    "CancelNode",
    "ConvoyDecision",
    "ConvoyEnded",
    "ConvoyNode",
    "ConvoyRun",
    "ConvoyState",
    "Dispatch",
    "IllegalTransition",
    "InvalidDefinition",
    "NodeState",
    "Violation",
    "validate_convoy",
]

MAX_NODES = 1000
"""Largest convoy accepted: bounds the work of validation and of every replay."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule of a definition.

    Attributes:
        path: where, in the request's JSON names, e.g. ``agents[2].dependsOn[0]``; the
            service passes it on as a `google.rpc.BadRequest` field violation.
        description: what is wrong, written for the caller.
    """

    path: str
    description: str


class IllegalTransition(Exception):
    """A call that the current state does not allow (start twice, a result for an idle node).

    The service maps it to FAILED_PRECONDITION; nothing was changed when it is raised.

    Attributes:
        message: what was refused and why, for the caller.
        subject: what the precondition is about, e.g. ``node backend`` or ``saga``.
    """

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject


class InvalidDefinition(ValueError):
    """A definition that validation rejected; raised by the run constructors.

    Attributes:
        violations: every problem found, in definition order.
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        first = self.violations[0]
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        super().__init__(f"{first.path}: {first.description}{more}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConvoyNode:
    """One node as defined at create (the seed calls them agents).

    Attributes:
        name: what other nodes put in `depends_on`; empty means the role, which is how
            the seed names its nodes.
        role: the role whose agents run the node's task.
        task: what the node has to do, in words.
        depends_on: names of the nodes that must succeed first.
    """

    name: str = ""
    role: str
    task: str
    depends_on: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The node's effective name: `name`, or `role` when no name was given."""
        return self.name or self.role


class NodeState(enum.Enum):
    """Where one node stands. Names match `ConvoyNode.State` without its prefix.

    The policy has no QUEUED: a dispatched node is RUNNING here, and the service tells
    queued from running by its task.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ConvoyState(enum.Enum):
    """Where the convoy stands. Names match `Convoy.State` without its prefix."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_SETTLED = frozenset({NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED})
_UNFINISHED = frozenset({NodeState.PENDING, NodeState.RUNNING})


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Submit the node's task now.

    Attributes:
        node: the node's effective name.
        role: the role to route the task to.
        task: the node's task text.
        inputs: output of every dependency, by dependency name; empty for a root.
    """

    node: str
    role: str
    task: str
    inputs: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class CancelNode:
    """Mark the node CANCELLED and cancel its task if one was submitted.

    Attributes:
        node: the node's effective name.
        reason: why, for the node's error.
    """

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConvoyEnded:
    """The convoy reached its terminal state; emitted exactly once per run.

    Attributes:
        state: SUCCEEDED, FAILED or CANCELLED.
        reason: a sentence for the convoy's error (or a summary when it succeeded).
        failed_nodes: nodes that failed, in the order they failed.
    """

    state: ConvoyState
    reason: str
    failed_nodes: tuple[str, ...] = ()


ConvoyDecision = Dispatch | CancelNode | ConvoyEnded


def validate_convoy(nodes: Sequence[ConvoyNode]) -> list[Violation]:
    """Every structural problem of a convoy definition, in definition order.

    Field-level limits (lengths, name patterns) belong to the request rules table; this
    checks what only the whole graph can tell: names, references and cycles.

    Args:
        nodes: the nodes in the order the request listed them.

    Returns:
        The violations found; empty means the graph can run. Each path names the node.
    """
    if not nodes:
        return [Violation("agents", "a convoy needs at least one node")]
    if len(nodes) > MAX_NODES:
        # Past the limit nothing else is examined: the point is to bound the work.
        return [
            Violation(
                f"agents[{MAX_NODES}]",
                f"a convoy has at most {MAX_NODES:,} nodes; this one has {len(nodes):,}",
            )
        ]
    found: list[Violation] = []
    index_of: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if not node.role.strip():
            found.append(Violation(f"agents[{i}].role", "required: the role that runs the node"))
        if not node.task.strip():
            found.append(Violation(f"agents[{i}].task", "required: what the node has to do"))
        key = node.key
        if not key.strip():
            continue
        if key in index_of:
            field = "name" if node.name else "role"
            found.append(
                Violation(
                    f"agents[{i}].{field}",
                    f"node name {key!r} is already used by agents[{index_of[key]}]; "
                    "give one of them a distinct name",
                )
            )
        else:
            index_of[key] = i
    for i, node in enumerate(nodes):
        seen: set[str] = set()
        for j, target in enumerate(node.depends_on):
            path = f"agents[{i}].dependsOn[{j}]"
            if target == node.key:
                found.append(Violation(path, f"node {target!r} cannot depend on itself"))
            elif target not in index_of:
                found.append(Violation(path, f"no node is named {target!r}"))
            elif target in seen:
                found.append(Violation(path, f"{target!r} is listed twice"))
            seen.add(target)
    found.extend(_cycle_violations(nodes, index_of))
    return found


def _cycle_violations(nodes: Sequence[ConvoyNode], index_of: Mapping[str, int]) -> list[Violation]:
    """One violation per edge that closes a cycle, found by an iterative depth-first walk.

    Iterative because a 1,000-node chain would exceed Python's recursion limit. Bad
    edges (self, unknown, repeated) are already reported and left out of the walk. Only
    the first node of a duplicated name takes part, as the graph is ambiguous otherwise.
    """
    edges: dict[str, list[tuple[int, str]]] = {}
    for key, i in index_of.items():
        node = nodes[i]
        listed: list[tuple[int, str]] = []
        for j, target in enumerate(node.depends_on):
            if target != key and target in index_of and all(t != target for _, t in listed):
                listed.append((j, target))
        edges[key] = listed

    found: list[Violation] = []
    done: set[str] = set()
    for root in index_of:
        if root in done:
            continue
        # The path of the walk, each entry with the position of its next edge to follow.
        path: list[str] = [root]
        position: dict[str, int] = {root: 0}
        next_edge: list[int] = [0]
        while path:
            current = path[-1]
            out = edges[current]
            if next_edge[-1] == len(out):
                done.add(current)
                del position[current]
                path.pop()
                next_edge.pop()
                continue
            j, target = out[next_edge[-1]]
            next_edge[-1] += 1
            if target in position:
                # `current` depends on a node still on the walk: the loop closes here.
                loop = [current, *path[position[target] :]]
                found.append(
                    Violation(
                        f"agents[{index_of[current]}].dependsOn[{j}]",
                        "closes a dependency cycle: "
                        + " → ".join(loop)
                        + " (each depends on the next)",
                    )
                )
            elif target not in done:
                position[target] = len(path)
                path.append(target)
                next_edge.append(0)
    return found


class ConvoyRun:
    """One run of a validated convoy: node outcomes in, decisions out.

    Dependents only run after all their dependencies succeeded, so a failure cancels
    the nodes downstream of it while unrelated branches finish; the convoy ends once
    every node is settled. Illegal calls raise `IllegalTransition` and change nothing.
    """

    def __init__(self, nodes: Sequence[ConvoyNode]) -> None:
        """Check the definition and set every node PENDING.

        Raises:
            InvalidDefinition: when `validate_convoy` finds anything.
        """
        violations = validate_convoy(nodes)
        if violations:
            raise InvalidDefinition(violations)
        self._nodes: dict[str, ConvoyNode] = {node.key: node for node in nodes}
        self._dependents: dict[str, list[str]] = {key: [] for key in self._nodes}
        for node in nodes:
            for target in node.depends_on:
                self._dependents[target].append(node.key)
        self._waiting_on: dict[str, int] = {n.key: len(n.depends_on) for n in nodes}
        self._order: dict[str, int] = {key: i for i, key in enumerate(self._nodes)}
        self._states: dict[str, NodeState] = dict.fromkeys(self._nodes, NodeState.PENDING)
        self._outputs: dict[str, object] = {}
        self._reasons: dict[str, str] = {}
        self._failed: list[str] = []
        self._unsettled = len(self._nodes)
        self._state = ConvoyState.PENDING
        self._ended: ConvoyEnded | None = None

    # Read-only views. Mappings are live proxies: they follow the run without copying.

    @property
    def state(self) -> ConvoyState:
        """The convoy's lifecycle state."""
        return self._state

    @property
    def nodes(self) -> tuple[ConvoyNode, ...]:
        """The definition, in its original order."""
        return tuple(self._nodes.values())

    @property
    def node_states(self) -> Mapping[str, NodeState]:
        """Each node's state, by effective name, in definition order."""
        return MappingProxyType(self._states)

    @property
    def dependencies(self) -> list[tuple[str, str]]:
        """Every edge as ``(node, depends_on)``, in definition order."""
        return [(key, target) for key, node in self._nodes.items() for target in node.depends_on]

    @property
    def outputs(self) -> Mapping[str, object]:
        """Outputs of the nodes that succeeded, by name."""
        return MappingProxyType(self._outputs)

    @property
    def node_reasons(self) -> Mapping[str, str]:
        """Why each FAILED or CANCELLED node ended, by name."""
        return MappingProxyType(self._reasons)

    @property
    def failed_nodes(self) -> tuple[str, ...]:
        """Nodes that failed, in the order they failed."""
        return tuple(self._failed)

    @property
    def ended(self) -> ConvoyEnded | None:
        """The end decision once the convoy is terminal, else None."""
        return self._ended

    # Transitions.

    def start(self) -> list[ConvoyDecision]:
        """Start the convoy: dispatch every node that depends on nothing.

        Raises:
            IllegalTransition: the convoy was already started or has ended.
        """
        if self._state is not ConvoyState.PENDING:
            raise IllegalTransition(
                f"the convoy is {self._state.name}; only a PENDING convoy can start",
                subject="convoy",
            )
        self._state = ConvoyState.RUNNING
        return [self._dispatch(key) for key, node in self._nodes.items() if not node.depends_on]

    def node_succeeded(self, name: str, output: object) -> list[ConvoyDecision]:
        """Record a node's success and dispatch the dependents it was the last wait of.

        Args:
            name: the node's effective name.
            output: its task's result, handed on verbatim to its dependents.

        Raises:
            IllegalTransition: unknown node, or the node is not RUNNING (for instance a
                late result after it was cancelled; the service drops such results).
        """
        self._require_running(name)
        self._settle(name, NodeState.SUCCEEDED)
        self._outputs[name] = output
        decisions: list[ConvoyDecision] = []
        for dependent in self._dependents[name]:
            self._waiting_on[dependent] -= 1
            if self._waiting_on[dependent] == 0 and self._states[dependent] is NodeState.PENDING:
                decisions.append(self._dispatch(dependent))
        decisions.extend(self._end_if_settled())
        return decisions

    def node_failed(self, name: str, reason: str) -> list[ConvoyDecision]:
        """Record a node's failure (after its last attempt) and cancel what depends on it.

        Nodes outside the failed node's downstream keep running; the convoy ends FAILED
        once they settle.

        Args:
            name: the node's effective name.
            reason: why its task failed.

        Raises:
            IllegalTransition: unknown node, or the node is not RUNNING.
        """
        self._require_running(name)
        self._settle(name, NodeState.FAILED)
        self._reasons[name] = reason
        self._failed.append(name)
        decisions: list[ConvoyDecision] = []
        why = f"dependency {name} failed"
        for key in self._downstream_of(name):
            # Only PENDING is reachable in practice (a dependent runs only after this
            # node succeeded); RUNNING is handled in case the caller broke that rule.
            if self._states[key] in _UNFINISHED:
                self._settle(key, NodeState.CANCELLED)
                self._reasons[key] = why
                decisions.append(CancelNode(key, why))
        decisions.extend(self._end_if_settled())
        return decisions

    def cancel(self, reason: str = "") -> list[ConvoyDecision]:
        """Cancel the convoy on a caller's request: every unfinished node is cancelled.

        Works before start too (every node is then cancelled). Running nodes become
        CANCELLED at once; their results, if they still arrive, are refused.

        Args:
            reason: the caller's reason; a default sentence when empty.

        Raises:
            IllegalTransition: the convoy has already ended.
        """
        if self._state not in (ConvoyState.PENDING, ConvoyState.RUNNING):
            raise IllegalTransition(
                f"the convoy is {self._state.name}; it can no longer be cancelled",
                subject="convoy",
            )
        why = reason or "cancelled by the caller"
        decisions: list[ConvoyDecision] = []
        for key, state in self._states.items():
            if state in _UNFINISHED:
                self._settle(key, NodeState.CANCELLED)
                self._reasons[key] = why
                decisions.append(CancelNode(key, why))
        decisions.append(self._end(ConvoyState.CANCELLED, why))
        return decisions

    # Internals.

    def _require_running(self, name: str) -> None:
        if self._state is not ConvoyState.RUNNING:
            raise IllegalTransition(
                f"the convoy is {self._state.name}; node outcomes are accepted only while it runs",
                subject=f"node {name}",
            )
        state = self._states.get(name)
        if state is None:
            raise IllegalTransition(f"the convoy has no node {name!r}", subject=f"node {name}")
        if state is not NodeState.RUNNING:
            raise IllegalTransition(
                f"node {name} is {state.name}; only a RUNNING node can finish",
                subject=f"node {name}",
            )

    def _dispatch(self, key: str) -> Dispatch:
        node = self._nodes[key]
        self._states[key] = NodeState.RUNNING
        inputs = {target: self._outputs[target] for target in node.depends_on}
        return Dispatch(key, node.role, node.task, inputs)

    def _settle(self, key: str, state: NodeState) -> None:
        self._states[key] = state
        self._unsettled -= 1

    def _downstream_of(self, name: str) -> list[str]:
        """Every transitive dependent of `name`, in definition order."""
        seen: set[str] = set()
        stack = list(self._dependents[name])
        while stack:
            key = stack.pop()
            if key not in seen:
                seen.add(key)
                stack.extend(self._dependents[key])
        return sorted(seen, key=self._order.__getitem__)

    def _end_if_settled(self) -> list[ConvoyDecision]:
        if self._unsettled:
            return []
        if not self._failed:
            return [self._end(ConvoyState.SUCCEEDED, f"all {len(self._nodes)} nodes succeeded")]
        first = self._failed[0]
        reason = f"node {first} failed: {self._reasons[first]}"
        if len(self._failed) > 1:
            reason += "; also failed: " + ", ".join(self._failed[1:])
        return [self._end(ConvoyState.FAILED, reason)]

    def _end(self, state: ConvoyState, reason: str) -> ConvoyEnded:
        self._state = state
        self._ended = ConvoyEnded(state, reason, tuple(self._failed))
        return self._ended
