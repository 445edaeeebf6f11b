"""The monitor's schedule: sample every interval, keep the latest, feed the watchers.

One background loop takes the scheduled samples; those update the Prometheus gauges,
go to the coordinator hook and wake the watchers that follow the configured interval
(watchers wait on a condition, they never poll). A watcher that asks for an interval
of its own samples on its own schedule; its samples refresh the latest one but do not
disturb anyone else's cadence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

from godel_grpc._proto.godel.v1 import sample_pb2
from godel_grpc.errors import FieldViolation, InvalidArgument, Unavailable
from sidecars.monitor.lifetime import wait_for_exit
from sidecars.monitor.reporting import CoordinatorReporter
from sidecars.monitor.sampler import ProcessGone, TreeSampler

log = logging.getLogger(__name__)

Sample = sample_pb2.Sample

MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0


def check_interval(seconds: float, field: str = "interval") -> float:
    """Returns `seconds` if it is a sampling interval the monitor accepts.

    Raises:
        InvalidArgument: outside 0.1 to 3,600 seconds.
    """
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise InvalidArgument(
            [
                FieldViolation(
                    field,
                    f"must be between {MIN_INTERVAL} and {MAX_INTERVAL:.0f} seconds; "
                    f"got {seconds:g} s",
                )
            ]
        )
    return seconds


class Monitor:
    """Samples one process tree on a schedule and serves the samples."""

    def __init__(
        self,
        sampler: TreeSampler,
        *,
        interval: float = 1.0,
        on_sample: Callable[[Sample], None] | None = None,
        reporter: CoordinatorReporter | None = None,
    ) -> None:
        """Sets the monitor up; `run` starts the schedule.

        Args:
            sampler: measures the watched process tree.
            interval: seconds between scheduled samples, 0.1 to 3,600.
            on_sample: called with each scheduled sample (the Prometheus gauges).
            reporter: the coordinator hook; none means no reporting.
        """
        self._sampler = sampler
        self.interval = check_interval(interval)
        self._on_sample = on_sample
        self._reporter = reporter or CoordinatorReporter()
        self._latest: Sample | None = None
        self._round = 0
        """Number of scheduled samples taken; watchers compare it to what they saw."""
        self._changed = asyncio.Condition()
        self._sampling = asyncio.Lock()
        self.exited = asyncio.Event()
        """Set when the watched process has exited."""
        self._ended = asyncio.Event()
        """Set when the process exited or the monitor is stopping."""

    @property
    def pid(self) -> int:
        """The watched process id."""
        return self._sampler.pid

    async def run(self) -> None:
        """Samples every `interval` until the process exits or `stop` is called."""
        exit_watch = asyncio.create_task(self._watch_exit(), name="monitor-exit-watch")
        try:
            while not self._ended.is_set():
                try:
                    sample = await self._take()
                except Unavailable:
                    break
                if self._on_sample is not None:
                    self._on_sample(sample)
                await self._report(sample)
                async with self._changed:
                    self._round += 1
                    self._changed.notify_all()
                await self._pause(self.interval)
        finally:
            exit_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exit_watch

    async def stop(self) -> None:
        """Ends the schedule and every watcher (with UNAVAILABLE)."""
        await self._end()

    async def current(self) -> Sample:
        """The latest sample; one is taken now if there is none yet.

        Raises:
            Unavailable: when the watched process has exited.
        """
        if self.exited.is_set():
            raise _exited(self.pid)
        if self._latest is None:
            return await self._take()
        return self._latest

    async def watch(self, interval: float | None = None) -> AsyncIterator[Sample]:
        """One sample per interval, the first at once, until the caller stops.

        Args:
            interval: seconds between samples; None follows the monitor's schedule.

        Raises:
            InvalidArgument: for an interval outside 0.1 to 3,600 seconds.
            Unavailable: when the process exits or the monitor stops.
        """
        if interval is not None and interval != self.interval:
            async for sample in self._own_schedule(check_interval(interval)):
                yield sample
            return
        yield await self.current()
        seen = self._round
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._news_since, seen))
                seen = self._round
            self._raise_if_ended()
            assert self._latest is not None  # a round always leaves a sample
            yield self._latest

    async def _own_schedule(self, interval: float) -> AsyncIterator[Sample]:
        while True:
            yield await self._take()
            await self._pause(interval)
            self._raise_if_ended()

    def _news_since(self, seen: int) -> bool:
        return self._round > seen or self._ended.is_set()

    def _raise_if_ended(self) -> None:
        if self.exited.is_set():
            raise _exited(self.pid)
        if self._ended.is_set():
            raise Unavailable("the monitor sidecar is shutting down")

    async def _take(self) -> Sample:
        """Samples now; one sample at a time, so CPU deltas stay in order."""
        if self.exited.is_set():
            raise _exited(self.pid)
        async with self._sampling:
            try:
                sample = await asyncio.to_thread(self._sampler.sample)
            except ProcessGone:
                await self._mark_exited()
                raise _exited(self.pid) from None
        self._latest = sample
        return sample

    async def _report(self, sample: Sample) -> None:
        try:
            await self._reporter.report_sample_to_coordinator(sample)
        except Exception:  # a hook that fails is logged, never fatal to sampling
            log.exception("reporting a sample to the coordinator failed")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), seconds)

    async def _watch_exit(self) -> None:
        if await wait_for_exit(self.pid) and not self._sampler.alive():
            await self._mark_exited()

    async def _mark_exited(self) -> None:
        if self.exited.is_set():
            return
        log.info("the agent process exited", extra={"pid": self.pid})
        self.exited.set()
        await self._end()

    async def _end(self) -> None:
        self._ended.set()
        async with self._changed:
            self._changed.notify_all()


def _exited(pid: int) -> Unavailable:
    return Unavailable(f"the agent process {pid} has exited")
