"""The convoy policy: validation of the graph and the run's decisions, node by node."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from godel_grpc.patterns.convoy import (
    MAX_NODES,
    CancelNode,
    ConvoyDecision,
    ConvoyEnded,
    ConvoyNode,
    ConvoyRun,
    ConvoyState,
    Dispatch,
    IllegalTransition,
    InvalidDefinition,
    NodeState,
    validate_convoy,
)


def seed_convoy() -> list[ConvoyNode]:
    """The seed's feature-implementation convoy, with roles as node names."""
    return [
        ConvoyNode(role="architect", task="Design system architecture"),
        ConvoyNode(role="backend", task="Implement API endpoints", depends_on=("architect",)),
        ConvoyNode(role="frontend", task="Build UI components", depends_on=("architect",)),
        ConvoyNode(role="tester", task="Write tests", depends_on=("backend", "frontend")),
        ConvoyNode(role="reviewer", task="Final review", depends_on=("tester",)),
    ]


def dispatched(decisions: list[ConvoyDecision]) -> list[str]:
    return [d.node for d in decisions if isinstance(d, Dispatch)]


def cancelled(decisions: list[ConvoyDecision]) -> list[str]:
    return [d.node for d in decisions if isinstance(d, CancelNode)]


def ends(decisions: list[ConvoyDecision]) -> list[ConvoyEnded]:
    return [d for d in decisions if isinstance(d, ConvoyEnded)]


# The seed's convoy, end to end.


def test_seed_convoy_runs_in_dependency_order_and_succeeds() -> None:
    # Given the seed's convoy
    run = ConvoyRun(seed_convoy())
    assert run.state is ConvoyState.PENDING

    # When it starts, then only the architect is dispatched, with no inputs
    first = run.start()
    assert first == [Dispatch("architect", "architect", "Design system architecture", {})]
    assert run.state is ConvoyState.RUNNING

    # When the architect succeeds, then backend and frontend go out together with its output
    after_architect = run.node_succeeded("architect", {"design": "v1"})
    assert dispatched(after_architect) == ["backend", "frontend"]
    assert all(
        d.inputs == {"architect": {"design": "v1"}}
        for d in after_architect
        if isinstance(d, Dispatch)
    )

    # When only the backend succeeds, then the tester still waits for the frontend
    assert run.node_succeeded("backend", "api") == []
    assert run.node_states["tester"] is NodeState.PENDING

    # When the frontend succeeds, then the tester runs with both outputs
    after_frontend = run.node_succeeded("frontend", "ui")
    assert after_frontend == [
        Dispatch("tester", "tester", "Write tests", {"backend": "api", "frontend": "ui"})
    ]

    # When the tester succeeds, then the reviewer runs last
    assert dispatched(run.node_succeeded("tester", "green")) == ["reviewer"]

    # When the reviewer succeeds, then the convoy ends SUCCEEDED, once
    last = run.node_succeeded("reviewer", "lgtm")
    assert last == [ConvoyEnded(ConvoyState.SUCCEEDED, "all 5 nodes succeeded", ())]
    assert run.state is ConvoyState.SUCCEEDED
    assert set(run.node_states.values()) == {NodeState.SUCCEEDED}
    assert run.outputs["reviewer"] == "lgtm"
    assert run.ended == last[0]


def test_failed_backend_cancels_its_dependents_and_lets_the_frontend_finish() -> None:
    # Given the seed's convoy with backend and frontend running
    run = ConvoyRun(seed_convoy())
    run.start()
    run.node_succeeded("architect", "design")

    # When the backend fails
    decisions = run.node_failed("backend", "compile error")

    # Then tester and reviewer are cancelled, and the convoy has not ended yet
    assert decisions == [
        CancelNode("tester", "dependency backend failed"),
        CancelNode("reviewer", "dependency backend failed"),
    ]
    assert run.state is ConvoyState.RUNNING
    assert run.node_states["frontend"] is NodeState.RUNNING
    assert run.node_reasons["reviewer"] == "dependency backend failed"

    # When the frontend, an unrelated branch, completes
    final = run.node_succeeded("frontend", "ui")

    # Then the convoy ends FAILED naming the backend, exactly once
    assert final == [
        ConvoyEnded(ConvoyState.FAILED, "node backend failed: compile error", ("backend",))
    ]
    assert dict(run.node_states) == {
        "architect": NodeState.SUCCEEDED,
        "backend": NodeState.FAILED,
        "frontend": NodeState.SUCCEEDED,
        "tester": NodeState.CANCELLED,
        "reviewer": NodeState.CANCELLED,
    }
    assert run.failed_nodes == ("backend",)


def test_two_failures_both_named_first_one_first() -> None:
    # Given backend and frontend running
    run = ConvoyRun(seed_convoy())
    run.start()
    run.node_succeeded("architect", None)

    # When the frontend fails and then the backend
    run.node_failed("frontend", "css")
    final = run.node_failed("backend", "sql")

    # Then the reason starts with the first failure and lists the other
    assert ends(final) == [
        ConvoyEnded(
            ConvoyState.FAILED,
            "node frontend failed: css; also failed: backend",
            ("frontend", "backend"),
        )
    ]


def test_cancel_mid_run_cancels_everything_unfinished_and_ends_once() -> None:
    # Given backend done and frontend still running
    run = ConvoyRun(seed_convoy())
    run.start()
    run.node_succeeded("architect", None)
    run.node_succeeded("backend", None)

    # When the caller cancels
    decisions = run.cancel("not needed any more")

    # Then the running and pending nodes are cancelled and the convoy ends CANCELLED
    assert cancelled(decisions) == ["frontend", "tester", "reviewer"]
    assert ends(decisions) == [ConvoyEnded(ConvoyState.CANCELLED, "not needed any more", ())]
    assert run.node_states["backend"] is NodeState.SUCCEEDED

    # And a late result of the cancelled frontend is refused, changing nothing
    with pytest.raises(IllegalTransition):
        run.node_succeeded("frontend", "late")
    assert run.node_states["frontend"] is NodeState.CANCELLED

    # And a second cancel is refused
    with pytest.raises(IllegalTransition):
        run.cancel()


def test_cancel_before_start_cancels_every_node() -> None:
    run = ConvoyRun(seed_convoy())
    decisions = run.cancel()
    assert len(cancelled(decisions)) == 5
    assert ends(decisions)[0].state is ConvoyState.CANCELLED
    with pytest.raises(IllegalTransition):
        run.start()


@pytest.mark.parametrize(
    "call",
    [
        lambda run: run.node_succeeded("architect", None),  # not started
        lambda run: (run.start(), run.start()),  # started twice
        lambda run: (run.start(), run.node_succeeded("backend", None)),  # still pending
        lambda run: (run.start(), run.node_failed("nobody", "x")),  # unknown node
        lambda run: (
            run.start(),
            run.node_succeeded("architect", None),
            run.node_succeeded("architect", None),  # finished twice
        ),
    ],
    ids=["before-start", "start-twice", "pending-node", "unknown-node", "result-twice"],
)
def test_illegal_calls_raise_illegal_transition(call: object) -> None:
    # Given a fresh seed convoy; when an illegal call is made, then it is refused
    run = ConvoyRun(seed_convoy())
    with pytest.raises(IllegalTransition):
        call(run)  # type: ignore[operator]


def test_views_expose_edges_in_definition_order() -> None:
    run = ConvoyRun(seed_convoy())
    assert run.dependencies == [
        ("backend", "architect"),
        ("frontend", "architect"),
        ("tester", "backend"),
        ("tester", "frontend"),
        ("reviewer", "tester"),
    ]
    assert [node.key for node in run.nodes] == [
        "architect",
        "backend",
        "frontend",
        "tester",
        "reviewer",
    ]


# Validation.


def paths(nodes: list[ConvoyNode]) -> list[str]:
    return [v.path for v in validate_convoy(nodes)]


def test_seed_convoy_is_valid() -> None:
    assert validate_convoy(seed_convoy()) == []


def test_empty_convoy_is_rejected() -> None:
    assert paths([]) == ["agents"]


def test_empty_role_and_task_are_rejected() -> None:
    nodes = [ConvoyNode(name="a", role="", task=" ")]
    assert paths(nodes) == ["agents[0].role", "agents[0].task"]


def test_duplicate_roles_without_names_are_duplicates() -> None:
    # Given two nodes of the same role and no names
    nodes = [ConvoyNode(role="worker", task="a"), ConvoyNode(role="worker", task="b")]
    # Then the second one is reported, pointing at the first
    [violation] = validate_convoy(nodes)
    assert violation.path == "agents[1].role"
    assert "agents[0]" in violation.description


def test_same_role_with_distinct_names_is_fine() -> None:
    nodes = [
        ConvoyNode(name="w1", role="worker", task="a"),
        ConvoyNode(name="w2", role="worker", task="b", depends_on=("w1",)),
    ]
    assert validate_convoy(nodes) == []
    assert ConvoyRun(nodes).start() == [Dispatch("w1", "worker", "a", {})]


def test_duplicate_explicit_name_points_at_the_name() -> None:
    nodes = [ConvoyNode(name="x", role="a", task="t"), ConvoyNode(name="x", role="b", task="t")]
    assert paths(nodes) == ["agents[1].name"]


def test_unknown_self_and_repeated_dependencies_are_rejected() -> None:
    nodes = [
        ConvoyNode(role="a", task="t"),
        ConvoyNode(role="b", task="t", depends_on=("ghost", "b", "a", "a")),
    ]
    found = validate_convoy(nodes)
    assert [v.path for v in found] == [
        "agents[1].dependsOn[0]",
        "agents[1].dependsOn[1]",
        "agents[1].dependsOn[3]",
    ]
    assert "ghost" in found[0].description
    assert "itself" in found[1].description


def test_cycle_is_reported_on_the_closing_node_with_every_member() -> None:
    # Given a → c → b → a (each depends on the next), plus an innocent root
    nodes = [
        ConvoyNode(role="root", task="t"),
        ConvoyNode(role="a", task="t", depends_on=("root", "c")),
        ConvoyNode(role="b", task="t", depends_on=("a",)),
        ConvoyNode(role="c", task="t", depends_on=("b",)),
    ]
    # When validating
    [violation] = validate_convoy(nodes)
    # Then the node whose edge closes the loop (walking from the first node, a) is named,
    # with the whole loop
    assert violation.path == "agents[2].dependsOn[0]"
    assert "b → a → c → b" in violation.description
    with pytest.raises(InvalidDefinition) as raised:
        ConvoyRun(nodes)
    assert raised.value.violations == (violation,)


def test_size_limit() -> None:
    # Given a chain of exactly the limit: valid (and deep enough to defeat recursion)
    chain = [ConvoyNode(name="n0", role="r", task="t")] + [
        ConvoyNode(name=f"n{i}", role="r", task="t", depends_on=(f"n{i - 1}",))
        for i in range(1, MAX_NODES)
    ]
    assert validate_convoy(chain) == []
    # When one more node is added, then the first node past the limit is named
    longer = [*chain, ConvoyNode(name="extra", role="r", task="t")]
    assert paths(longer) == [f"agents[{MAX_NODES}]"]


def test_long_cycle_through_the_limit_is_found() -> None:
    ring = [
        ConvoyNode(name=f"n{i}", role="r", task="t", depends_on=(f"n{(i + 1) % MAX_NODES}",))
        for i in range(MAX_NODES)
    ]
    [violation] = validate_convoy(ring)
    assert violation.description.count("→") == MAX_NODES


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 7),
    edges=st.sets(st.tuples(st.integers(0, 6), st.integers(0, 6))),
)
def test_a_cycle_is_reported_iff_the_graph_has_one(size: int, edges: set[tuple[int, int]]) -> None:
    # Given any directed graph without self-loops
    edges = {(a, b) for a, b in edges if a < size and b < size and a != b}
    nodes = [
        ConvoyNode(
            role=f"n{i}", task="t", depends_on=tuple(f"n{b}" for a, b in sorted(edges) if a == i)
        )
        for i in range(size)
    ]
    # When validating, then a cycle is reported iff peeling off roots cannot empty it
    remaining = set(range(size))
    while True:
        roots = {i for i in remaining if not any(a == i and b in remaining for a, b in edges)}
        if not roots:
            break
        remaining -= roots
    found = validate_convoy(nodes)
    assert bool(found) == bool(remaining)
    # And every node named on a reported cycle really is on one
    for violation in found:
        members = violation.description.split(": ", 1)[1].split(" (")[0].split(" → ")
        assert {int(m[1:]) for m in members} <= remaining


# The acceptance property: any DAG of up to 8 nodes, any failures, any finishing order.


NAMES = ["architect", "backend", "frontend", "tester", "reviewer", "docs", "ops", "qa"]


@st.composite
def dag_runs(draw: st.DrawFn) -> tuple[list[ConvoyNode], set[str], list[int]]:
    """A random DAG, a failure set and the choices that order completions."""
    size = draw(st.integers(1, 8))
    names = draw(st.permutations(NAMES))[:size]
    # Edges only from a lower to a higher index keep it acyclic; the names are shuffled
    # so index order says nothing about the name, and so is the definition order.
    deps = [[names[i] for i in range(j) if draw(st.booleans())] for j in range(size)]
    nodes = [
        ConvoyNode(role=names[j], task=f"task {j}", depends_on=tuple(deps[j])) for j in range(size)
    ]
    nodes = draw(st.permutations(nodes))
    failing = draw(st.sets(st.sampled_from(names)))
    picks = draw(st.lists(st.integers(0, 7), min_size=size, max_size=size))
    return list(nodes), failing, picks


def reference_outcome(nodes: list[ConvoyNode], failing: set[str]) -> dict[str, NodeState]:
    """What each node must end as, from ancestor sets alone."""
    ancestors = {n.key: set(n.depends_on) for n in nodes}
    changed = True
    while changed:  # transitive closure, the slow and obvious way
        changed = False
        for key, found in ancestors.items():
            wider = found.union(*(ancestors[a] for a in found))
            if wider != found:
                ancestors[key] = wider
                changed = True
    outcome = {}
    for key, found in ancestors.items():
        if found & failing:
            outcome[key] = NodeState.CANCELLED
        elif key in failing:
            outcome[key] = NodeState.FAILED
        else:
            outcome[key] = NodeState.SUCCEEDED
    return outcome


@settings(max_examples=400, deadline=None)
@given(case=dag_runs())
def test_any_dag_with_any_failures_ends_as_the_reference_predicts(
    case: tuple[list[ConvoyNode], set[str], list[int]],
) -> None:
    # Given a random DAG, the nodes that fail when run and an order of completions
    nodes, failing, picks = case
    run = ConvoyRun(nodes)
    deps = {n.key: n.depends_on for n in nodes}
    ever_dispatched: set[str] = set()
    running: list[str] = []
    endings: list[ConvoyEnded] = []
    calls: list[tuple[str, str, object]] = [("start", "", None)]

    def absorb(decisions: list[ConvoyDecision]) -> None:
        for decision in decisions:
            assert not endings, "nothing may follow the end"
            if isinstance(decision, Dispatch):
                # Invariants: once only, after every dependency succeeded, with their outputs
                assert decision.node not in ever_dispatched
                assert all(run.outputs.get(d) == f"out:{d}" for d in deps[decision.node])
                assert dict(decision.inputs) == {d: f"out:{d}" for d in deps[decision.node]}
                ever_dispatched.add(decision.node)
                running.append(decision.node)
            elif isinstance(decision, CancelNode):
                assert decision.node not in running
            else:
                endings.append(decision)

    # When it runs to the end, finishing whichever running node the draw picks
    absorb(run.start())
    step = 0
    while running:
        node = running.pop(picks[step % len(picks)] % len(running))
        step += 1
        if node in failing:
            calls.append(("failed", node, "boom"))
            absorb(run.node_failed(node, "boom"))
        else:
            calls.append(("succeeded", node, f"out:{node}"))
            absorb(run.node_succeeded(node, f"out:{node}"))
        if running:
            assert not endings, "the convoy may not end while nodes run"

    # Then every node ends as the reference model says, and the convoy ends once
    expected = reference_outcome(nodes, failing)
    assert dict(run.node_states) == expected
    expected_failed = {k for k, s in expected.items() if s is NodeState.FAILED}
    assert len(endings) == 1
    [end] = endings
    assert end.state is (ConvoyState.FAILED if expected_failed else ConvoyState.SUCCEEDED)
    assert set(end.failed_nodes) == expected_failed
    if expected_failed:
        assert end.reason.startswith(f"node {end.failed_nodes[0]} failed: boom")
    assert run.state is end.state

    # And re-applying the same calls to a fresh run rebuilds the same state
    again = ConvoyRun(nodes)
    for kind, name, value in calls:
        if kind == "start":
            again.start()
        elif kind == "failed":
            again.node_failed(name, str(value))
        else:
            again.node_succeeded(name, value)
    assert dict(again.node_states) == dict(run.node_states)
    assert again.ended == run.ended
    assert dict(again.outputs) == dict(run.outputs)
