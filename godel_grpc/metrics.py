"""Prometheus metrics of the coordinator, registered on an injected registry.

Names follow the Prometheus guide: `godel_` prefix, seconds for durations, `_total`
for counters. Labels are bounded (method, code, state, outcome); never a task id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from godel_grpc._proto.godel.v1 import sample_pb2

_FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class _StateCollector(Collector):
    """Reads counts by state at scrape time, so no hot path keeps a gauge up to date."""

    def __init__(self, name: str, help_text: str, counts: Callable[[], Mapping[str, int]]) -> None:
        self._name = name
        self._help = help_text
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._help, labels=["state"])
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        yield family


class _SampleCollector(Collector):
    """Reads each connected agent's latest monitor sample at scrape time.

    Labels are agent names, bounded by the agents connected now: an agent's series
    disappear with its link.
    """

    FIGURES = (
        (
            "godel_agent_cpu_percent",
            "CPU of the agent's process tree, percent of one core.",
            "cpu_percent",
        ),
        (
            "godel_agent_memory_rss_bytes",
            "Resident memory of the agent's process tree, bytes.",
            "memory_rss_bytes",
        ),
        ("godel_agent_threads", "Threads of the agent's process tree.", "threads"),
        ("godel_agent_open_fds", "Open file descriptors of the agent's process tree.", "open_fds"),
    )

    def __init__(self, rows: Callable[[], Iterable[tuple[str, sample_pb2.Sample]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        families = [
            (GaugeMetricFamily(name, text, labels=["agent"]), attribute)
            for name, text, attribute in self.FIGURES
        ]
        for agent, sample in self._rows():
            for family, attribute in families:
                family.add_metric([agent], float(getattr(sample, attribute)))
        for family, _ in families:
            yield family


QueueRow = tuple[str, int, bool, Mapping[tuple[str, str], int]]
"""(queue name, depth, pressure, tasks by (priority, outcome)) of one backpressure queue."""


class _QueueCollector(Collector):
    """Reads every queue's depth, pressure and counters at scrape time.

    Labels are queue names, bounded by the queues that exist; a deleted queue's series
    disappear with it.
    """

    def __init__(self, rows: Callable[[], Iterable[QueueRow]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "godel_queue_depth", "Tasks waiting in a backpressure queue.", labels=["queue"]
        )
        pressure = GaugeMetricFamily(
            "godel_queue_pressure",
            "1 while a backpressure queue is under pressure (from its high watermark until "
            "it falls below its low one), else 0.",
            labels=["queue"],
        )
        tasks = CounterMetricFamily(
            "godel_queue_tasks",
            "Tasks offered to a backpressure queue since the coordinator started, by "
            "priority (low, normal, high, critical) and outcome (accepted; shed: refused or "
            "evicted by shed-load/drop-oldest; rejected).",
            labels=["queue", "priority", "outcome"],
        )
        for name, queued, pressured, outcomes in self._rows():
            depth.add_metric([name], queued)
            pressure.add_metric([name], 1 if pressured else 0)
            for (priority, outcome), count in sorted(outcomes.items()):
                tasks.add_metric([name, priority, outcome], count)
        yield depth
        yield pressure
        yield tasks


class _CircuitCollector(Collector):
    """Reads each connected agent's breaker position at scrape time.

    Nothing per agent lives in the registry: a breaker that never changes costs the
    metrics nothing, and an agent's series goes with its link.
    """

    def __init__(self, rows: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "godel_circuit_state",
            "Circuit breaker of each connected agent: 0 closed, 1 open, 2 half-open. "
            "A series goes when its agent disconnects.",
            labels=["agent"],
        )
        for name, value in self._rows():
            family.add_metric([name], value)
        yield family


BulkheadRow = tuple[str, str, int, int, int]
"""(bulkhead name, partition, queued, running, rejected) of one bulkhead partition."""


class _BulkheadCollector(Collector):
    """Reads every bulkhead partition's task counts and refusals at scrape time.

    Labels are bulkhead and partition names, bounded by the bulkheads that exist (at
    most 64 partitions each); a deleted bulkhead's series disappear with it.
    """

    def __init__(self, rows: Callable[[], Iterable[BulkheadRow]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "godel_bulkhead_tasks",
            "Tasks holding a bulkhead partition's slots, by state (queued, running).",
            labels=["bulkhead", "partition", "state"],
        )
        rejected = CounterMetricFamily(
            "godel_bulkhead_rejected",
            "Submits a bulkhead partition refused because it was full, since the "
            "coordinator started.",
            labels=["bulkhead", "partition"],
        )
        for bulkhead, partition, queued, running, refused in self._rows():
            tasks.add_metric([bulkhead, partition, "queued"], queued)
            tasks.add_metric([bulkhead, partition, "running"], running)
            rejected.add_metric([bulkhead, partition], refused)
        yield tasks
        yield rejected


SwarmRow = tuple[str, int, int, int]
"""(swarm, current agents, desired agents, draining agents)."""


class _SwarmCollector(Collector):
    """Reads every swarm's size at scrape time.

    Labels are swarm names, bounded by the swarms that exist; a deleted swarm's series
    disappear with it.
    """

    def __init__(self, rows: Callable[[], Iterable[SwarmRow]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        agents = GaugeMetricFamily(
            "godel_swarm_agents",
            "Agents of a swarm, by state: current (taking work), desired (what the "
            "autoscaler aims for), draining (finishing their tasks before they stop).",
            labels=["swarm", "state"],
        )
        for swarm, current, desired, draining in self._rows():
            agents.add_metric([swarm, "current"], current)
            agents.add_metric([swarm, "desired"], desired)
            agents.add_metric([swarm, "draining"], draining)
        yield agents


class CoordinatorMetrics:
    """Every metric the coordinator exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpcs = Counter(
            "godel_rpc_handled",
            "RPCs finished, by full method name and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "godel_rpc_duration_seconds",
            "Time from an RPC's start to its end (streams: their whole life), by method.",
            ["method"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.agents_connected = Gauge(
            "godel_agents_connected",
            "Agents with an open link.",
            registry=registry,
        )
        self.dispatch_seconds = Histogram(
            "godel_dispatch_latency_seconds",
            "Time a task waited in its queue before being leased to an agent.",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.append_seconds = Histogram(
            "godel_event_store_append_seconds",
            "Time one batched append to the event store took, fsync included.",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.append_batch = Histogram(
            "godel_event_store_batch_events",
            "Events written per batched append (group commit).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.results = Counter(
            "godel_task_results",
            "Attempt results received from agents, by outcome "
            "(succeeded, failed, stale: dropped because the attempt was no longer current).",
            ["outcome"],
            registry=registry,
        )
        self.link_batch = Histogram(
            "godel_link_message_tasks",
            "Assignments (to_agent) or results (from_agent) carried by one agent-link "
            "message: how well the link batches.",
            ["direction"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.part_seconds = Histogram(
            "godel_pattern_part_duration_seconds",
            "Time from lease to end of a pattern's part (convoy node, saga step), by pattern, "
            "phase (run, forward, compensate: the count of compensate is compensations run) "
            "and outcome.",
            ["pattern", "phase", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.circuit_transitions = Counter(
            "godel_circuit_transitions",
            "Circuit breaker state changes, by the state entered and the rule that fired "
            "(consecutive-failures, failure-rate, slow-call-rate, timeout-elapsed, "
            "trial-failed, trial-slow, trials-succeeded, forced-open, reset).",
            ["to", "reason"],
            registry=registry,
        )
        self.requeued = Counter(
            "godel_tasks_requeued",
            "Attempts given back to the queue, by reason (agent_lost, released, restart).",
            ["reason"],
            registry=registry,
        )

        self.swarm_scale_events = Counter(
            "godel_swarm_scale_events",
            "Swarm scale decisions carried out, by direction (up, down) and trigger "
            "(load: the scale policy; bounds: a size outside minAgents..maxAgents).",
            ["direction", "trigger"],
            registry=registry,
        )

    def watch_task_states(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Exports task counts by state, read from `counts` at scrape time."""
        self.registry.register(
            _StateCollector(
                "godel_tasks", "Tasks the coordinator knows, by lifecycle state.", counts
            )
        )

    def watch_pattern_states(self, pattern: str, counts: Callable[[], Mapping[str, int]]) -> None:
        """Exports a pattern's resources by state (`godel_convoys`, `godel_sagas`)."""
        self.registry.register(
            _StateCollector(
                f"godel_{pattern}s",
                f"{pattern.capitalize()}s the coordinator keeps in memory, by lifecycle state.",
                counts,
            )
        )

    def watch_agent_samples(
        self, rows: Callable[[], Iterable[tuple[str, sample_pb2.Sample]]]
    ) -> None:
        """Exports each connected agent's latest monitor sample (`godel_agent_cpu_percent`,
        `godel_agent_memory_rss_bytes`, `godel_agent_threads`, `godel_agent_open_fds`)."""
        self.registry.register(_SampleCollector(rows))

    def watch_circuits(self, rows: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Exports each connected agent's breaker position (`godel_circuit_state`), read
        from `rows` (agent name, value) at scrape time."""
        self.registry.register(_CircuitCollector(rows))

    def watch_queues(self, rows: Callable[[], Iterable[QueueRow]]) -> None:
        """Exports backpressure queues (`godel_queue_depth`, `godel_queue_pressure`,
        `godel_queue_tasks_total`), read from `rows` at scrape time."""
        self.registry.register(_QueueCollector(rows))

    def watch_bulkheads(self, rows: Callable[[], Iterable[BulkheadRow]]) -> None:
        """Exports bulkhead partitions (`godel_bulkhead_tasks`,
        `godel_bulkhead_rejected_total`), read from `rows` at scrape time."""
        self.registry.register(_BulkheadCollector(rows))

    def watch_swarms(self, rows: Callable[[], Iterable[SwarmRow]]) -> None:
        """Exports swarm sizes (`godel_swarm_agents`), read from `rows` at scrape time."""
        self.registry.register(_SwarmCollector(rows))
