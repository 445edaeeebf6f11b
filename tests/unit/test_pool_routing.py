"""A task put on a pool (queue, partition, swarm) still tells its agent what to run."""

from __future__ import annotations

import pytest

from godel_grpc._proto.godel.v1 import task_pb2
from godel_grpc.core import pool_routing
from godel_grpc.core.pool_routing import carry_target, role_and_action

POOLS = [
    (pool_routing.QUEUE, "queue", "q1"),
    (pool_routing.PARTITION, "partition", "b1/auth"),
    (pool_routing.SWARM, "swarm", "sw-1-1"),
]


@pytest.mark.parametrize(("labels", "target", "pool"), POOLS)
@pytest.mark.parametrize(
    ("asked", "pool_role", "expected"),
    [
        ({"action": "resize"}, "workers", ("", "resize")),
        ({"role": "builder"}, "workers", ("builder", "")),
        ({}, "workers", ("workers", "")),
        ({}, "", ("", "")),
    ],
)
def test_what_a_task_asked_for_survives_its_move_onto_a_pool(
    labels: pool_routing.PoolLabels,
    target: str,
    pool: str,
    asked: dict[str, str],
    pool_role: str,
    expected: tuple[str, str],
) -> None:
    """Given a task that asked for an action, a role or nothing, when it is carried onto
    a pool whose role is `pool_role` and retargeted there, then its agent is asked for
    that action, that role, or the pool's role."""
    spec = task_pb2.Task(id="t-1", **asked)  # type: ignore[arg-type]

    carry_target(spec, labels, pool_role)
    setattr(spec, target, pool)

    assert spec.WhichOneof("target") == target
    assert role_and_action(spec) == expected


def test_a_task_on_no_pool_runs_as_it_asked() -> None:
    """Given tasks targeted at a role and at an action, their agents are asked for just
    that, whatever labels they carry."""
    labels = {pool_routing.QUEUE.role: "other"}
    assert role_and_action(task_pb2.Task(role="builder", labels=labels)) == ("builder", "")
    assert role_and_action(task_pb2.Task(action="resize", labels=labels)) == ("", "resize")
