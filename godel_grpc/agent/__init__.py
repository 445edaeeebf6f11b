"""The agent SDK: serve a coordinator's tasks with Python handlers or a command line.

Example::

    from godel_grpc.agent import Agent, TaskContext

    agent = Agent("127.0.0.1:50051", role="reviewer", capacity=4)

    @agent.handler
    async def review(ctx: TaskContext) -> dict[str, object]:
        await ctx.progress(0.5, "reading the diff")
        return {"verdict": "ok"}

    asyncio.run(agent.run())

`ExecHandler` turns a shell command into a handler, and `godel agent` (built from
`add_agent_arguments` and `run_agent_command`) runs either kind from the command line.
Handlers keep what they learn in ``ctx.memory`` (reflex memory, kept by the coordinator
and, when persistent, across restarts) and see their score and lessons from feedback
in ``ctx.score`` and ``ctx.lessons``. ``Agent(..., logger="127.0.0.1:PORT")``
(``godel agent --logger``) also ships every log line to that logger sidecar, without
ever making a task wait for it.
"""

from godel_grpc.agent._agent import Agent
from godel_grpc.agent._attempt import Handler, Output
from godel_grpc.agent._cli import add_agent_arguments, run_agent_command
from godel_grpc.agent._context import Reporter, TaskContext
from godel_grpc.agent._errors import AgentRejected, TaskFailed
from godel_grpc.agent._exec import ExecHandler
from godel_grpc.agent._memory import Memory, MemoryLimitError

__all__ = [
    "Agent",
    "AgentRejected",
    "ExecHandler",
    "Handler",
    "Memory",
    "MemoryLimitError",
    "Output",
    "Reporter",
    "TaskContext",
    "TaskFailed",
    "add_agent_arguments",
    "run_agent_command",
]
