"""Measuring an agent's process tree with psutil.

An ``--exec`` agent does its work in child processes, so every figure covers the agent
process and all its live descendants. CPU is the hard one: children come and go between
two samples. The sampler therefore counts CPU time over the tree *including* the time of
children that have already exited and been waited for (``children_user`` /
``children_system`` of their parent): when a child exits, its time moves from the live
sum into its parent's reaped sum, so the tree's total keeps growing steadily and the
difference between two samples is the CPU the tree used in between, even for commands
that started and finished inside one interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable

import psutil

from godel_grpc._proto.godel.v1 import sample_pb2

METRICS = ("cpu", "memory", "threads", "fds", "io")
"""The figures a monitor can be asked for (``--metrics``)."""


class ProcessGone(Exception):
    """The watched process has exited (a zombie waiting for its parent counts)."""


def parse_metrics(text: str) -> frozenset[str]:
    """The metric names of a comma-separated list such as ``"cpu,memory"``.

    Raises:
        ValueError: for an empty list or an unknown name.
    """
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"name at least one metric among {', '.join(METRICS)}")
    return names


class TreeSampler:
    """Takes samples of one process and its descendants.

    Thread-safe: samples are taken in worker threads, and the CPU baseline must move
    from one sample to the next in order.
    """

    def __init__(self, pid: int, metrics: Collection[str] = METRICS, agent_id: str = "") -> None:
        """Starts watching `pid`.

        Raises:
            ProcessGone: when `pid` is not running.
            ValueError: for an unknown metric name.
        """
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics: {sorted(unknown)}")
        try:
            self._root = psutil.Process(pid)
            self._started = self._root.create_time()
        except psutil.NoSuchProcess as exc:
            raise ProcessGone(f"process {pid} is not running") from exc
        self.pid = pid
        self.agent_id = agent_id
        self._metrics = frozenset(metrics)
        self._lock = threading.Lock()
        self._cpu_baseline: tuple[float, float] | None = None
        """(monotonic time, tree CPU seconds) at the previous sample."""
        if not self.alive():
            raise ProcessGone(f"process {pid} has exited")

    @property
    def metrics(self) -> frozenset[str]:
        """The metrics this sampler fills in."""
        return self._metrics

    def alive(self) -> bool:
        """Whether the watched process is still running (not exited, not a zombie)."""
        try:
            # is_running also compares the start time, so a recycled pid is not "alive".
            return self._root.is_running() and self._root.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def sample(self) -> sample_pb2.Sample:
        """Measures the tree now.

        Raises:
            ProcessGone: when the watched process has exited.
        """
        with self._lock:
            if not self.alive():
                raise ProcessGone(f"process {self.pid} has exited")
            try:
                tree = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess as exc:
                raise ProcessGone(f"process {self.pid} has exited") from exc
            sample = sample_pb2.Sample(pid=self.pid, agent_id=self.agent_id)
            sample.time.GetCurrentTime()
            cpu_seconds = self._measure(tree, sample)
            if "cpu" in self._metrics:
                sample.cpu_percent = self._cpu_percent(cpu_seconds)
            return sample

    def _measure(self, tree: Iterable[psutil.Process], sample: sample_pb2.Sample) -> float:
        """Adds each process's figures to `sample`; returns the tree's CPU seconds."""
        wanted = self._metrics
        cpu_seconds = 0.0
        for process in tree:
            try:
                with process.oneshot():
                    if "cpu" in wanted:
                        times = process.cpu_times()
                        cpu_seconds += (
                            times.user + times.system + times.children_user + times.children_system
                        )
                    if process.status() == psutil.STATUS_ZOMBIE:
                        continue  # its CPU counts until it is reaped; it holds nothing else
                    sample.process_count += 1
                    if "memory" in wanted:
                        sample.memory_rss_bytes += process.memory_info().rss
                    if "threads" in wanted:
                        sample.threads += process.num_threads()
                    if "fds" in wanted:
                        sample.open_fds += _open_fds(process)
                    if "io" in wanted:
                        read, written = _io_bytes(process)
                        sample.io_read_bytes += read
                        sample.io_write_bytes += written
            except psutil.NoSuchProcess:
                if process is self._root:
                    raise ProcessGone(f"process {self.pid} has exited") from None
                continue  # a child that exited mid-sample; its CPU shows in its parent
            except psutil.AccessDenied:
                continue  # a descendant running as another user; nothing we may read
        return cpu_seconds

    def _cpu_percent(self, cpu_seconds: float) -> float:
        now = time.monotonic()
        if self._cpu_baseline is None:
            # The first sample has no previous one: report the average since the
            # process started rather than a meaningless 0.
            elapsed = max(time.time() - self._started, 1e-3)
            used = cpu_seconds
        else:
            then, before = self._cpu_baseline
            elapsed = max(now - then, 1e-3)
            # A subtree that left (re-parented to init) takes its time with it; the
            # total can then drop, which must not read as negative CPU.
            used = max(cpu_seconds - before, 0.0)
        self._cpu_baseline = (now, cpu_seconds)
        return round(used / elapsed * 100.0, 2)


def _open_fds(process: psutil.Process) -> int:
    count = getattr(process, "num_fds", None) or getattr(process, "num_handles", None)
    return int(count()) if count is not None else 0  # Windows counts handles instead


def _io_bytes(process: psutil.Process) -> tuple[int, int]:
    counters = getattr(process, "io_counters", None)
    if counters is None:
        return 0, 0  # macOS: psutil has no per-process I/O counters there
    io = counters()
    return int(io.read_bytes), int(io.write_bytes)
