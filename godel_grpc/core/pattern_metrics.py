"""PatternService.GetPatternMetrics: one overview of what every pattern is doing and has
done ("measure impact" in the seed's best practices).

Gauges are read from the pattern managers as they are now. Counters come from the
Prometheus counters the coordinator keeps anyway (so this query and /metrics always
agree) or, for the patterns whose outcomes stay on their resources, from the resources
still in memory; all of them count from the coordinator's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter

from godel_grpc._proto.godel.v1 import (
    convoy_pb2,
    pattern_service_pb2,
    saga_pb2,
    workflow_pb2,
)
from godel_grpc.patterns.breaker import CircuitState

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator

Response = pattern_service_pb2.GetPatternMetricsResponse
_DONE = (
    saga_pb2.COMPENSATION_STATE_SUCCEEDED,
    saga_pb2.COMPENSATION_STATE_FAILED,
)


def _counted(counter: Counter, keep: Callable[[dict[str, str]], bool]) -> int:
    """The sum of a labelled counter's `_total` samples whose labels pass `keep`."""
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and keep(sample.labels)
        )
    )


def _compensations(states: Iterable[int]) -> tuple[int, int]:
    """(compensations run, of which failed) among compensation states."""
    done = [state for state in states if state in _DONE]
    return len(done), sum(state == saga_pb2.COMPENSATION_STATE_FAILED for state in done)


def read(coordinator: Coordinator, since: float) -> Response:
    """The overview as of now; `since` is when the counters started (wall seconds)."""
    response = Response()
    response.time.FromNanoseconds(time.time_ns())
    response.since.FromNanoseconds(int(since * 1e9))

    convoys = [coordinator.convoys.to_proto(r) for r in coordinator.convoys.convoys.values()]
    response.active_convoys = sum(
        c.state in (convoy_pb2.Convoy.STATE_PENDING, convoy_pb2.Convoy.STATE_RUNNING)
        for c in convoys
    )
    response.convoy_nodes_cancelled_total = sum(
        node.state == convoy_pb2.ConvoyNode.STATE_CANCELLED
        for convoy in convoys
        if convoy.state == convoy_pb2.Convoy.STATE_FAILED
        for node in convoy.agents
    )

    sagas = [coordinator.sagas.to_proto(r) for r in coordinator.sagas.sagas.values()]
    response.running_sagas = sum(s.state == saga_pb2.Saga.STATE_RUNNING for s in sagas)
    response.compensating_sagas = sum(s.state == saga_pb2.Saga.STATE_COMPENSATING for s in sagas)
    workflows = [record.workflow for record in coordinator.workflows.workflows.values()]
    response.active_workflows = sum(
        w.state in (workflow_pb2.Workflow.STATE_PENDING, workflow_pb2.Workflow.STATE_RUNNING)
        for w in workflows
    )
    run, failed = _compensations(
        [step.compensation_state for saga in sagas for step in saga.steps]
        + [  # a saga stage's undo is its saga's, counted above
            stage.compensation_state
            for workflow in workflows
            for stage in workflow.stages
            if stage.pattern != "saga"
        ]
    )
    response.compensations_total, response.compensations_failed_total = run, failed

    swarm_rows = list(coordinator.swarms.metric_rows())
    response.active_swarms = len(swarm_rows)
    response.swarm_agents = sum(current + draining for _, current, _, draining in swarm_rows)
    transitions = coordinator.metrics.swarm_scale_events
    response.scale_up_events_total = _counted(
        transitions, lambda labels: labels["direction"] == "up"
    )
    response.scale_down_events_total = _counted(
        transitions, lambda labels: labels["direction"] == "down"
    )

    queue_rows = list(coordinator.queues.metric_rows())
    response.queues = len(queue_rows)
    response.queues_under_pressure = sum(pressure for _, _, pressure, _ in queue_rows)
    for _, _, _, outcomes in queue_rows:
        response.tasks_shed_total += sum(n for (_, o), n in outcomes.items() if o == "shed")
        response.tasks_rejected_total += sum(n for (_, o), n in outcomes.items() if o == "rejected")

    response.bulkheads = len(coordinator.bulkheads.bulkheads)
    response.bulkhead_rejections_total = sum(
        rejected for *_, rejected in coordinator.bulkheads.metric_rows()
    )

    for agent_id in coordinator.sessions:
        found = coordinator.breakers.view(agent_id)
        if found is not None:
            state = found[0].state
            response.open_circuits += state is CircuitState.OPEN
            response.half_open_circuits += state is CircuitState.HALF_OPEN
    response.breaker_held_dispatches_total = coordinator.breakers.held_back
    response.breaker_opens_total = _counted(
        coordinator.metrics.circuit_transitions, lambda labels: labels["to"] == "open"
    )

    response.feedback_total = sum(
        agent.reflex.feedback_count
        for agent in coordinator.state.agents.values()
        if agent.reflex is not None
    )
    response.snapshots_total = coordinator.agent_history.snapshots_written
    return response
