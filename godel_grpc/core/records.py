"""In-memory records of tasks and agents: the coordinator's projection of its events.

Plain slotted classes instead of protobuf messages, because the dispatcher touches them
on every lease and result; they turn into API messages only when a caller asks.
"""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from godel_grpc._proto.godel.v1 import agent_pb2, sample_pb2, task_pb2

Task = task_pb2.Task
Agent = agent_pb2.Agent
TaskState = task_pb2.Task.State
AgentState = agent_pb2.Agent.State

PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
"""Lower rank is leased first."""

DEFAULT_MAX_ATTEMPTS = 3
TERMINAL_TASK_STATES = frozenset({Task.STATE_SUCCEEDED, Task.STATE_FAILED, Task.STATE_CANCELLED})


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for a Unix time in seconds."""
    nanos = int(seconds * 1e9)
    return timestamp_pb2.Timestamp(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


class TaskRecord:
    """One task as the coordinator knows it.

    `spec` is the accepted Task message (its request fields); everything else is the
    task's changing state, folded from events.
    """

    __slots__ = (
        "_error",
        "_output",
        "_spec",
        "agent_id",
        "attempt_id",
        "attempts",
        "create_time",
        "deadline",
        "end_time",
        "failures",
        "has_owner",
        "id",
        "max_attempts",
        "pool",
        "priority_rank",
        "progress",
        "start_time",
        "state",
    )

    def __init__(self, spec: task_pb2.Task, create_time: float) -> None:
        self.id = spec.id
        # Kept serialized: a protobuf message holds an arena of about a kilobyte, while
        # a small task's bytes are a tenth of that; a queue of 100,000 tasks feels it.
        self._spec = spec.SerializeToString()
        self.has_owner = spec.HasField("owner")
        self.state = Task.STATE_QUEUED
        self.pool = pool_of(spec)
        self.priority_rank = PRIORITY_RANK.get(spec.priority or "normal", 2)
        self.max_attempts = spec.max_attempts or DEFAULT_MAX_ATTEMPTS
        self.deadline = spec.deadline.ToNanoseconds() / 1e9 if spec.HasField("deadline") else None
        self.attempts = 0
        self.failures = 0
        self.agent_id = ""
        self.attempt_id = ""
        self._output: bytes | None = None
        self._error: bytes | None = None
        self.progress: task_pb2.TaskProgressReport | None = None
        self.create_time = create_time
        self.start_time = 0.0
        self.end_time = 0.0

    @property
    def spec(self) -> task_pb2.Task:
        """The accepted task's request fields (a fresh message on each access)."""
        return task_pb2.Task.FromString(self._spec)

    @property
    def output(self) -> struct_pb2.Struct | None:
        """Result of a SUCCEEDED task."""
        return None if self._output is None else struct_pb2.Struct.FromString(self._output)

    @output.setter
    def output(self, value: struct_pb2.Struct | None) -> None:
        self._output = None if value is None else value.SerializeToString()

    @property
    def error(self) -> task_pb2.TaskError | None:
        """Why the task (or its last attempt) failed or was cancelled."""
        return None if self._error is None else task_pb2.TaskError.FromString(self._error)

    @error.setter
    def error(self, value: task_pb2.TaskError | None) -> None:
        self._error = None if value is None else value.SerializeToString()

    @property
    def terminal(self) -> bool:
        """Whether the task has ended for good."""
        return self.state in TERMINAL_TASK_STATES

    def to_proto(self) -> task_pb2.Task:
        """The task as the API shows it."""
        task = task_pb2.Task.FromString(self._spec)
        task.state = self.state
        task.attempts = self.attempts
        task.agent_id = self.agent_id
        task.attempt_id = self.attempt_id
        task.failed_attempts = self.failures
        if self._output is not None:
            task.output.SetInParent()  # present even when the output is {}
            task.output.MergeFromString(self._output)
        if self._error is not None:
            task.error.SetInParent()
            task.error.MergeFromString(self._error)
        if self.progress is not None:
            task.progress.CopyFrom(self.progress)
        task.create_time.CopyFrom(timestamp(self.create_time))
        if self.start_time:
            task.start_time.CopyFrom(timestamp(self.start_time))
        if self.end_time:
            task.end_time.CopyFrom(timestamp(self.end_time))
        return task


def pool_of(spec: task_pb2.Task) -> str:
    """The pool a task targets: `role:NAME`, `action:NAME`, `queue:NAME`,
    `partition:BULKHEAD/PARTITION` or `swarm:ID`."""
    target = spec.WhichOneof("target")
    if target == "action":
        return f"action:{spec.action}"
    if target == "queue":
        return f"queue:{spec.queue}"
    if target == "partition":
        return f"partition:{spec.partition}"
    if target == "swarm":
        return f"swarm:{spec.swarm}"
    return f"role:{spec.role}"


class AgentRecord:
    """One registered agent identity and its counters."""

    __slots__ = (
        "actions",
        "capacity",
        "circuit",
        "connect_time",
        "create_time",
        "event_count",
        "id",
        "in_flight",
        "labels",
        "last_seen",
        "name",
        "position",
        "queues",
        "reflex",
        "resume_token_sha256",
        "role",
        "running",
        "sample",
        "state",
        "tasks_completed",
        "tasks_failed",
        "version",
    )

    def __init__(self, agent_id: str, name: str, role: str, create_time: float) -> None:
        self.id = agent_id
        self.name = name
        self.role = role
        self.actions: list[str] = []
        self.queues: list[str] = []
        self.capacity = 1
        self.labels: dict[str, str] = {}
        self.resume_token_sha256 = ""
        self.version = ""
        self.state = Agent.STATE_DISCONNECTED
        self.in_flight = 0
        self.tasks_completed = 0
        self.tasks_failed = 0
        self.create_time = create_time
        self.connect_time = 0.0
        self.last_seen = 0.0
        self.sample: sample_pb2.Sample | None = None
        """Latest sample from the agent's monitor sidecar; in memory only, and dropped
        when the link ends, so it never describes a process that is gone."""
        self.running: set[str] = set()
        """Tasks leased to the agent whose attempt has not ended (`agent_fold`)."""
        self.circuit = "CLOSED"
        self.event_count = 0
        """The agent's own events folded so far."""
        self.position = 0
        """Log position of the last of them, when known."""
        self.reflex: agent_pb2.AgentReflexStatus | None = None
        """Set by the reflex manager (`core/reflex.py`) once the agent has reflex state."""

    def pools(self) -> list[str]:
        """The pools this agent serves."""
        return [
            f"role:{self.role}",
            *(f"action:{a}" for a in self.actions),
            *(f"queue:{q}" for q in self.queues),
        ]

    def to_proto(self) -> agent_pb2.Agent:
        """The agent as the API shows it."""
        agent = agent_pb2.Agent(
            id=self.id,
            name=self.name,
            role=self.role,
            actions=self.actions,
            capacity=self.capacity,
            labels=self.labels,
            state=self.state,
            in_flight=self.in_flight,
            tasks_completed=self.tasks_completed,
            tasks_failed=self.tasks_failed,
            version=self.version,
        )
        agent.create_time.CopyFrom(timestamp(self.create_time))
        if self.connect_time:
            agent.connect_time.CopyFrom(timestamp(self.connect_time))
        if self.last_seen:
            agent.last_seen_time.CopyFrom(timestamp(self.last_seen))
        if self.sample is not None:
            agent.latest_sample.CopyFrom(self.sample)
        if self.reflex is not None:
            agent.reflex.CopyFrom(self.reflex)
        return agent
