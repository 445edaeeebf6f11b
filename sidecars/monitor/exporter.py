"""The monitor's own Prometheus metrics: the latest sample as gauges.

Per-agent figures belong here rather than on the coordinator, whose labels must stay
bounded; each monitor watches one agent, so `agent_id` is the only label and has one
value. Only the metrics the monitor was asked to collect are registered: a gauge that
would always read 0 would lie. I/O byte figures are gauges, not counters, because they
are summed over a process tree whose members come and go, so they can go down.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Gauge

from godel_grpc._proto.godel.v1 import sample_pb2

Sample = sample_pb2.Sample

# metric → (gauge name, help, how to read it from a sample)
_GAUGES: dict[str, list[tuple[str, str, Callable[[Sample], float]]]] = {
    "cpu": [
        (
            "godel_agent_cpu_percent",
            "CPU use of the agent's process tree since the previous sample, in percent of "
            "one core.",
            lambda s: s.cpu_percent,
        )
    ],
    "memory": [
        (
            "godel_agent_memory_rss_bytes",
            "Resident memory of the agent's process tree, in bytes.",
            lambda s: s.memory_rss_bytes,
        )
    ],
    "threads": [
        (
            "godel_agent_threads",
            "Threads of the agent's process tree.",
            lambda s: s.threads,
        )
    ],
    "fds": [
        (
            "godel_agent_open_fds",
            "Open file descriptors of the agent's process tree.",
            lambda s: s.open_fds,
        )
    ],
    "io": [
        (
            "godel_agent_io_read_bytes",
            "Bytes read from storage by the live processes of the agent's tree.",
            lambda s: s.io_read_bytes,
        ),
        (
            "godel_agent_io_write_bytes",
            "Bytes written to storage by the live processes of the agent's tree.",
            lambda s: s.io_write_bytes,
        ),
    ],
}


class MonitorGauges:
    """Gauges for the chosen metrics, registered on an injected registry."""

    def __init__(
        self, registry: CollectorRegistry, metrics: Collection[str], agent_id: str = ""
    ) -> None:
        self._readers: list[tuple[Gauge, Callable[[Sample], float]]] = []
        for metric in sorted(metrics):
            for name, help_text, read in _GAUGES[metric]:
                gauge = Gauge(name, help_text, ["agent_id"], registry=registry)
                self._readers.append((gauge.labels(agent_id), read))

    def update(self, sample: Sample) -> None:
        """Sets every gauge from `sample`."""
        for gauge, read in self._readers:
            gauge.set(read(sample))
