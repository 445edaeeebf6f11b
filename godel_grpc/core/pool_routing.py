"""How a task aimed at a pattern's pool still tells its agent what to run.

A task put on a backpressure queue, a bulkhead partition or a swarm is targeted at that
pool, so only the pool's agents take it. The role or action it asked for (or the pool's
own role) is not lost: it travels in a pair of labels named after the kind of pool, and
the assignment hands it back to the agent as its role and action.
"""

from __future__ import annotations

from dataclasses import dataclass

from godel_grpc._proto.godel.v1 import task_pb2


@dataclass(frozen=True, slots=True)
class PoolLabels:
    """The labels one kind of pool carries a task's role and action in."""

    role: str
    action: str


QUEUE = PoolLabels("godel.queue.role", "godel.queue.action")
PARTITION = PoolLabels("godel.partition.role", "godel.partition.action")
SWARM = PoolLabels("godel.swarm.role", "godel.swarm.action")

_BY_TARGET = {"queue": QUEUE, "partition": PARTITION, "swarm": SWARM}
"""The `Task.target` field a pool sets, and that pool kind's labels."""


def carry_target(spec: task_pb2.Task, labels: PoolLabels, pool_role: str) -> None:
    """Keeps what a task asked to run in the pool's labels, before the caller retargets
    it at the pool: its action, else its role, else the pool's role (if any)."""
    target = spec.WhichOneof("target")
    if target == "action":
        spec.labels[labels.action] = spec.action
    elif target == "role" or pool_role:
        spec.labels[labels.role] = spec.role if target == "role" else pool_role


def role_and_action(spec: task_pb2.Task) -> tuple[str, str]:
    """The role and action an agent is asked to run the task as."""
    labels = _BY_TARGET.get(spec.WhichOneof("target") or "")
    if labels is None:
        return spec.role, spec.action
    return spec.labels.get(labels.role, ""), spec.labels.get(labels.action, "")
