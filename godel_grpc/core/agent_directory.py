"""The query side of agents: lookups, pages, fail-fast checks and monitor samples.

Reads what the coordinator's state and its open links hold. The one thing it changes is
an agent's latest monitor sample, which is a reading, not state: it is not an event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from godel_grpc._proto.godel.v1 import agent_pb2, sample_pb2
from godel_grpc.core.paging import NOT_A_TOKEN
from godel_grpc.core.session import AgentSession
from godel_grpc.core.state import CoordinatorState
from godel_grpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound


class AgentDirectory:
    """Answers questions about registered and connected agents."""

    def __init__(
        self, state: Callable[[], CoordinatorState], sessions: Mapping[str, AgentSession]
    ) -> None:
        """Creates a directory.

        Args:
            state: the coordinator's current state (read at each call: recovery
                replaces it).
            sessions: the open agent links by agent id, kept current by the coordinator.
        """
        self._state = state
        self._sessions = sessions

    def require_serving(self, roles: Iterable[str] = (), actions: Iterable[str] = ()) -> None:
        """Fail fast: raises FailedPrecondition unless every role and action has a
        connected agent that is not draining."""
        have_roles: set[str] = set()
        have_actions: set[str] = set()
        for agent_id, session in self._sessions.items():
            if not session.draining:
                agent = self._state().agents[agent_id]
                have_roles.add(agent.role)
                have_actions.update(agent.actions)
        missing = [f"role {r}" for r in sorted(set(roles) - have_roles)] + [
            f"action {a}" for a in sorted(set(actions) - have_actions)
        ]
        if missing:
            raise FailedPrecondition(
                f"no connected agent can run {', '.join(missing)}",
                subject=missing[0].replace(" ", "s/", 1),
                violation_type="NO_AGENT",
                reason="NO_AGENT",
            )

    def report_sample(self, agent_id: str, sample: sample_pb2.Sample) -> None:
        """Keeps a monitor sidecar's latest sample of a connected agent (not an event:
        a sample is a reading, not a change of the coordinator's state)."""
        agent = self._state().agents.get(agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        if sample.agent_id and sample.agent_id != agent_id:
            raise InvalidArgument(
                [FieldViolation("sample.agent_id", f"is {sample.agent_id!r}, not {agent_id!r}")]
            )
        if agent_id not in self._sessions:
            raise FailedPrecondition(
                f"agent {agent_id!r} is not connected; its samples are taken while it is",
                subject=f"agents/{agent_id}",
                reason="AGENT_NOT_CONNECTED",
            )
        agent.sample = sample

    def agent_name(self, agent_id: str) -> str | None:
        """The name of the agent with this id; None for an unknown id."""
        agent = self._state().agents.get(agent_id)
        return agent.name if agent is not None else None

    def sample_rows(self) -> Iterator[tuple[str, sample_pb2.Sample]]:
        """(agent name, latest sample) of each connected agent that has one.

        Called by the metrics server's thread: it walks a copy of the sessions taken in
        one step, as links may open and close meanwhile."""
        for agent_id in list(self._sessions):
            agent = self._state().agents.get(agent_id)
            if agent is not None and agent.sample is not None:
                yield agent.name, agent.sample

    def get_agent(self, agent_id: str) -> agent_pb2.Agent:
        """The agent with this id, or NotFound."""
        agent = self._state().agents.get(agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        return agent.to_proto()

    def list_agents(
        self, page_size: int = 0, page_token: str = "", state: int = 0, role: str = ""
    ) -> tuple[list[agent_pb2.Agent], str]:
        """A page of registered agents, oldest first, optionally of one state or role."""
        size = page_size or 100
        ids = list(self._state().agents)
        start = _page_start(page_token, len(ids))
        page: list[agent_pb2.Agent] = []
        index = start
        while index < len(ids) and len(page) < size:
            agent = self._state().agents[ids[index]]
            index += 1
            if (not state or agent.state == state) and (not role or agent.role == role):
                page.append(agent.to_proto())
        return page, (str(index) if index < len(ids) else "")


def _page_start(token: str, limit: int) -> int:
    """The index a page token stands for; INVALID_ARGUMENT for anything else."""
    if not token:
        return 0
    if not token.isdigit() or int(token) > limit:
        raise InvalidArgument([FieldViolation("pageToken", NOT_A_TOKEN)])
    return int(token)
