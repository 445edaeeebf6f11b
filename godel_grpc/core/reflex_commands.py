"""SubmitFeedback: rate an agent's work, fold the rating into its score, tell the agent.

Kept out of `coordinator.py`: it reads the coordinator's tasks and agents, records one
event through `Coordinator.record`, and hands the rest to the reflex manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import agent_service_pb2, event_pb2
from godel_grpc.core import events
from godel_grpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

if TYPE_CHECKING:
    from godel_grpc.core.coordinator import Coordinator


async def submit_feedback(
    coordinator: Coordinator, request: agent_service_pb2.SubmitFeedbackRequest
) -> agent_service_pb2.SubmitFeedbackResponse:
    """Records one feedback record (the rating's range is checked by the proto rules).

    Raises:
        NotFound: unknown agent.
        InvalidArgument: unknown task (`taskId` names nothing that exists).
        FailedPrecondition: the task never ran on this agent.
    """
    coordinator.require_open()
    agent_id = request.agent_id
    if agent_id not in coordinator.state.agents:
        raise NotFound("agent", agent_id)
    if request.task_id:
        await _require_ran_on(coordinator, request.task_id, agent_id)
    event = coordinator.reflex.feedback(agent_id, request.task_id, request.rating, request.comments)
    await coordinator.record([event])
    given = event.agent_feedback_submitted
    if given.scored:
        coordinator.scheduler.set_score(agent_id, given.score)
        session = coordinator.sessions.get(agent_id)
        if session is not None:
            session.send_feedback(
                link_pb2.AgentFeedback(
                    task_id=given.task_id,
                    rating=given.rating,
                    comments=given.comments,
                    score=given.score,
                    feedback_count=given.feedback_count,
                )
            )
    return agent_service_pb2.SubmitFeedbackResponse(
        score=given.score, feedback_count=given.feedback_count, score_updated=given.scored
    )


async def _require_ran_on(coordinator: Coordinator, task_id: str, agent_id: str) -> None:
    """Checks that some attempt of the task was leased to the agent: its last attempt
    (from memory, or the log for an old task), else any earlier one (from the log)."""
    try:
        task = await coordinator.get_task(task_id)
    except NotFound:
        raise InvalidArgument(
            [FieldViolation("taskId", f"no task has the id {task_id!r}")]
        ) from None
    if task.agent_id == agent_id:
        return
    if task.attempts > 1:
        await coordinator.journal.flush()  # leases are journalled lazily
        recorded = await coordinator.store.read(0, 10_000, stream=events.task_stream(task_id))
        for stored in recorded:
            event = event_pb2.Event.FromString(stored.data)
            if event.WhichOneof("payload") == "task_leased" and (
                event.task_leased.agent_id == agent_id
            ):
                return
    ran = f"ran on agent {task.agent_id!r}" if task.agent_id else "has not run yet"
    raise FailedPrecondition(
        f"task {task_id!r} {ran}, not on agent {agent_id!r}: feedback rates an agent's own work",
        subject=f"tasks/{task_id}",
        violation_type="TASK_NOT_RUN_BY_AGENT",
        reason="TASK_NOT_RUN_BY_AGENT",
    )
