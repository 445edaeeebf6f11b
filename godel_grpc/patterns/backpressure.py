"""Backpressure policy: admission, ordering and pressure of one bounded task queue.

The queue holds task ids only (payloads live with the task records), each with one of
four priorities and an arrival number. It decides what a full queue does with a
newcomer, which task dispatch leases next, and when producers should slow down:

- ``shed-load``: a newcomer that outranks the lowest queued priority evicts the oldest
  task of that priority; otherwise the newcomer itself is shed. A task is never shed
  in favour of one of equal or lower priority.
- ``reject``: the newcomer is refused with a retry-after estimate.
- ``block``: the producer is told to WAIT. The gate stays closed until the pressure
  ends (depth below the low watermark), and meanwhile every offer waits, so producers
  that arrive later do not overtake those already waiting.
- ``drop-oldest``: the newcomer is always accepted and the task that has waited
  longest is evicted, whatever its priority.

Pressure has hysteresis: it turns on when the depth reaches the high watermark and
turns off only when the depth falls below the low watermark, so producers see one
steady signal instead of a flag that flickers with every take.

Nothing is lost without a count: ``accepted == taken + removed + evicted + depth``
holds after every call, overall and per priority, and every refusal is counted too.

Storage is four pairs of deques (arrival keys and ids), one pair per priority, plus a
dict from id to key, so offer, take and remove are O(1). Removal is lazy: a removed
task's deque slots stay until they reach the head or a compaction sweeps them out, and
an arrival key (``sequence * 4 + priority``) tells a live slot from a stale one even
when an id is offered again after removal.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from godel_grpc.patterns.convoy import Violation

__all__ = [
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_LOW_WATERMARK",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_STRATEGY",
    "MAX_MAX_SIZE",
    "Admission",
    "BackpressureConfig",
    "BoundedQueue",
    "EvictionReason",
    "Outcome",
    "Priority",
    "QueueCounts",
    "Strategy",
    "validate_backpressure",
]

DEFAULT_MAX_SIZE = 10_000
"""The proto's "0 means 10,000"."""
MAX_MAX_SIZE = 10_000_000
"""Largest queue accepted, as in the proto's rules."""
DEFAULT_HIGH_WATERMARK = 0.8
DEFAULT_LOW_WATERMARK = 0.3
DEFAULT_STRATEGY = "reject"
"""The proto's "empty means reject": refusing loudly is the least surprising overflow."""


class Priority(enum.IntEnum):
    """Task priority; a larger value is served first and shed last."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """The wire name: ``low``, ``normal``, ``high`` or ``critical``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """A priority from its wire name; empty means ``normal`` (proto3's unset string).

        Raises:
            ValueError: for any other name, so the caller can answer INVALID_ARGUMENT.
        """
        if isinstance(value, Priority):
            return value
        if value == "":
            return cls.NORMAL
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(
                f"unknown priority {value!r}; use low, normal, high or critical"
            ) from None


class Strategy(enum.Enum):
    """What a full queue does with a newcomer. Values are the wire names."""

    SHED_LOAD = "shed-load"
    REJECT = "reject"
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


class Outcome(enum.Enum):
    """The verdict on one offer."""

    ACCEPTED = "ACCEPTED"
    """Queued (possibly after evicting others, listed in `Admission.evicted`)."""
    SHED = "SHED"
    """Refused by shed-load: nothing queued ranks below the newcomer."""
    REJECTED = "REJECTED"
    """Refused by reject: the queue is full. Answer RESOURCE_EXHAUSTED + RetryInfo."""
    WAIT = "WAIT"
    """Block strategy: not queued; wait for `BoundedQueue.can_unblock()` and offer again."""


class EvictionReason(enum.Enum):
    """Why a queued task was pushed out; the value is meant for events and logs."""

    LOWER_PRIORITY = "shed-load: displaced by a higher-priority task"
    OLDEST = "drop-oldest: oldest task dropped for a newcomer"


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to `BoundedQueue.offer`.

    Attributes:
        outcome: what happened to the newcomer.
        evicted: queued tasks the admission pushed out, as ``(task_id, reason)``; the
            service ends each one (CANCELLED, code ``SHED``) and records an event.
        pressure: the pressure flag after the offer, for the producer's ack.
        depth: tasks queued after the offer.
        retry_after: seconds a refused or waiting producer should wait before offering
            again; None when accepted or shed (shedding is final, not "try later").
    """

    outcome: Outcome
    evicted: tuple[tuple[str, EvictionReason], ...] = ()
    pressure: bool = False
    depth: int = 0
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        """Whether the newcomer is now queued."""
        return self.outcome is Outcome.ACCEPTED


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """One queue's limits, with every default already filled in.

    Attributes:
        max_size: most tasks queued at once, at least 1.
        high_watermark: fraction of max_size at which pressure turns on.
        low_watermark: fraction of max_size below which pressure turns off; must be
            below high_watermark (equal would defeat the hysteresis).
        strategy: what a full queue does with a newcomer.
        retry_after: seconds suggested to a refused producer when no drain rate is
            known; also the ceiling of the estimate made from a drain rate.
        min_retry_after: the floor of that estimate, so producers never spin.
    """

    max_size: int = DEFAULT_MAX_SIZE
    high_watermark: float = DEFAULT_HIGH_WATERMARK
    low_watermark: float = DEFAULT_LOW_WATERMARK
    strategy: Strategy = Strategy.REJECT
    retry_after: float = 1.0
    min_retry_after: float = 0.05

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {self.max_size}")
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ValueError(
                "watermarks must satisfy 0 < low < high <= 1, not "
                f"low={self.low_watermark}, high={self.high_watermark}"
            )
        if not 0 < self.min_retry_after <= self.retry_after:
            raise ValueError("retry hints must satisfy 0 < min_retry_after <= retry_after")

    @classmethod
    def from_request(
        cls,
        *,
        strategy: str = "",
        max_size: int = 0,
        high_watermark: float = 0.0,
        low_watermark: float = 0.0,
    ) -> BackpressureConfig:
        """The config of a create request, with its zero values read as defaults.

        Call `validate_backpressure` first; this raises ValueError on what it reports.
        """
        return cls(
            max_size=max_size or DEFAULT_MAX_SIZE,
            high_watermark=high_watermark or DEFAULT_HIGH_WATERMARK,
            low_watermark=low_watermark or DEFAULT_LOW_WATERMARK,
            strategy=Strategy(strategy or DEFAULT_STRATEGY),
        )


def validate_backpressure(
    *,
    strategy: str = "",
    max_size: int = 0,
    high_watermark: float = 0.0,
    low_watermark: float = 0.0,
    path: str = "backpressure",
) -> list[Violation]:
    """Every problem of a create request's backpressure block, zero values as defaults.

    The rules table already bounds each field on its own; this adds what needs two
    fields or the defaults (a low watermark of 0.9 is invalid only because the default
    high one is 0.8).

    Returns:
        Violations with JSON paths such as ``backpressure.lowWatermark``.
    """
    found: list[Violation] = []
    names = ", ".join(s.value for s in Strategy)
    if strategy and strategy not in {s.value for s in Strategy}:
        found.append(Violation(f"{path}.strategy", f"must be one of {names}"))
    if not 0 <= max_size <= MAX_MAX_SIZE:
        found.append(Violation(f"{path}.maxSize", f"must be 1 to {MAX_MAX_SIZE:,} (0: default)"))
    high = high_watermark or DEFAULT_HIGH_WATERMARK
    low = low_watermark or DEFAULT_LOW_WATERMARK
    if not 0 < high <= 1:
        found.append(Violation(f"{path}.highWatermark", "must be above 0 and at most 1"))
    if not 0 < low < 1:
        found.append(Violation(f"{path}.lowWatermark", "must be above 0 and below 1"))
    elif low >= high:
        found.append(
            Violation(
                f"{path}.lowWatermark",
                f"must be below the high watermark ({high}); equal values leave no hysteresis",
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What happened to a queue's tasks (overall or for one priority).

    Attributes:
        accepted: offers that were queued.
        shed: newcomers refused by shed-load.
        rejected: newcomers refused by reject, plus blocked producers that gave up.
        evicted_lower_priority: queued tasks displaced by shed-load.
        evicted_oldest: queued tasks dropped by drop-oldest.
        taken: tasks handed to dispatch.
        removed: queued tasks cancelled by their owner.
        waited: WAIT answers given (a producer may get several; not a task count).
    """

    accepted: int = 0
    shed: int = 0
    rejected: int = 0
    evicted_lower_priority: int = 0
    evicted_oldest: int = 0
    taken: int = 0
    removed: int = 0
    waited: int = 0

    @property
    def evicted(self) -> int:
        """Queued tasks pushed out, for any reason."""
        return self.evicted_lower_priority + self.evicted_oldest

    @property
    def dropped(self) -> int:
        """Shed newcomers plus evicted tasks: the proto's `QueueCounts.shed`."""
        return self.shed + self.evicted


@dataclass(slots=True)
class _Tally:
    """Mutable counters of one priority; `QueueCounts` is their published snapshot."""

    accepted: int = 0
    shed: int = 0
    rejected: int = 0
    evicted_lower_priority: int = 0
    evicted_oldest: int = 0
    taken: int = 0
    removed: int = 0
    waited: int = 0

    def snapshot(self) -> QueueCounts:
        return QueueCounts(
            accepted=self.accepted,
            shed=self.shed,
            rejected=self.rejected,
            evicted_lower_priority=self.evicted_lower_priority,
            evicted_oldest=self.evicted_oldest,
            taken=self.taken,
            removed=self.removed,
            waited=self.waited,
        )


@dataclass(slots=True)
class _Lane:
    """The queued tasks of one priority in arrival order, stale slots included.

    Two parallel deques instead of one deque of tuples save a tuple per entry.
    """

    keys: deque[int] = field(default_factory=deque)
    ids: deque[str] = field(default_factory=deque)


_PRIORITIES = tuple(Priority)
_COMPACT_FLOOR = 1024
"""Stale slots tolerated before a sweep regardless of depth, so small queues never sweep."""


class BoundedQueue:
    """One queue's admission and ordering; the service owns payloads and producers.

    Args:
        config: limits and strategy.
    """

    __slots__ = (
        "_blocked",
        "_config",
        "_high_mark",
        "_key_of",
        "_lanes",
        "_low_mark",
        "_next_seq",
        "_pressure",
        "_stale",
        "_tallies",
    )

    def __init__(self, config: BackpressureConfig | None = None) -> None:
        self._config = config or BackpressureConfig()
        size = self._config.max_size
        # Integer thresholds, so that float noise (0.7 * 10 == 7.000000000000001) cannot
        # move a watermark: for an integer depth d, d >= x exactly when d >= ceil(x).
        self._high_mark = max(1, math.ceil(round(self._config.high_watermark * size, 9)))
        self._low_mark = math.ceil(round(self._config.low_watermark * size, 9))
        self._lanes = tuple(_Lane() for _ in _PRIORITIES)
        self._key_of: dict[str, int] = {}
        self._tallies = tuple(_Tally() for _ in _PRIORITIES)
        self._next_seq = 0
        self._stale = 0
        self._pressure = False
        self._blocked = False

    # -- reading -------------------------------------------------------------------------

    @property
    def config(self) -> BackpressureConfig:
        """The queue's limits."""
        return self._config

    @property
    def depth(self) -> int:
        """Tasks queued now."""
        return len(self._key_of)

    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._key_of

    @property
    def high_mark(self) -> int:
        """The depth at which pressure turns on."""
        return self._high_mark

    @property
    def low_mark(self) -> int:
        """Pressure turns off once the depth is below this."""
        return self._low_mark

    @property
    def pressure(self) -> bool:
        """Whether producers should slow down (hysteresis between the watermarks).

        The service compares it before and after a call to stamp `pressure_change_time`.
        """
        return self._pressure

    @property
    def blocked(self) -> bool:
        """Block strategy: whether offers currently answer WAIT."""
        return self._blocked

    def can_unblock(self) -> bool:
        """Whether a producer that got WAIT may offer again: the pressure has ended."""
        return not self._pressure

    def priority_of(self, task_id: str) -> Priority | None:
        """The priority a queued task was offered with; None when it is not queued."""
        key = self._key_of.get(task_id)
        return None if key is None else _PRIORITIES[key & 3]

    def depth_of(self, priority: Priority | str) -> int:
        """Tasks of one priority queued now."""
        counts = self._tallies[Priority.parse(priority)].snapshot()
        return counts.accepted - counts.taken - counts.removed - counts.evicted

    def counts(self, priority: Priority | str | None = None) -> QueueCounts:
        """Counters overall, or for one priority."""
        if priority is not None:
            return self._tallies[Priority.parse(priority)].snapshot()
        return QueueCounts(
            **{
                f.name: sum(getattr(tally, f.name) for tally in self._tallies)
                for f in fields(_Tally)
            }
        )

    def counts_by_priority(self) -> dict[str, QueueCounts]:
        """Counters keyed by wire name (``low`` … ``critical``), as `Queue.priority_counts`."""
        return {p.label: self._tallies[p].snapshot() for p in _PRIORITIES}

    def __iter__(self) -> Iterator[str]:
        """Queued ids in take order (for listings and tests; O(depth + stale))."""
        for priority in reversed(_PRIORITIES):
            lane = self._lanes[priority]
            for key, task_id in zip(lane.keys, lane.ids, strict=True):
                if self._key_of.get(task_id) == key:
                    yield task_id

    # -- changing ------------------------------------------------------------------------

    def offer(
        self,
        task_id: str,
        priority: Priority | str = Priority.NORMAL,
        *,
        drain_rate: float | None = None,
    ) -> Admission:
        """Decide on one newcomer under the queue's strategy.

        Args:
            task_id: unique among queued tasks.
            priority: a `Priority` or its wire name.
            drain_rate: tasks per second leaving the queue lately, if the caller tracks
                it; refines the retry-after hint of REJECTED and WAIT answers.

        Returns:
            The verdict, the tasks it evicted, and the pressure and depth after it.

        Raises:
            ValueError: the id is already queued (a caller bug: ids are server-made),
                or the priority name is unknown. Nothing changed.
        """
        rank = Priority.parse(priority)
        if task_id in self._key_of:
            raise ValueError(f"task {task_id!r} is already queued")
        tally = self._tallies[rank]
        strategy = self._config.strategy
        if strategy is Strategy.BLOCK and (self._blocked or self.depth >= self._config.max_size):
            self._blocked = True
            tally.waited += 1
            return self._answer(Outcome.WAIT, retry_after=self._retry_hint(drain_rate))
        evicted: tuple[tuple[str, EvictionReason], ...] = ()
        if self.depth >= self._config.max_size:
            if strategy is Strategy.REJECT:
                tally.rejected += 1
                return self._answer(Outcome.REJECTED, retry_after=self._retry_hint(drain_rate))
            if strategy is Strategy.SHED_LOAD:
                lowest = self._lowest_oldest()
                if lowest >= rank:
                    tally.shed += 1
                    return self._answer(Outcome.SHED)
                victim = self._pop_head(lowest)
                self._tallies[lowest].evicted_lower_priority += 1
                evicted = ((victim, EvictionReason.LOWER_PRIORITY),)
            else:
                oldest = self._oldest()
                victim = self._pop_head(oldest)
                self._tallies[oldest].evicted_oldest += 1
                evicted = ((victim, EvictionReason.OLDEST),)
        key = self._next_seq * 4 + rank
        self._next_seq += 1
        lane = self._lanes[rank]
        lane.keys.append(key)
        lane.ids.append(task_id)
        self._key_of[task_id] = key
        tally.accepted += 1
        self._update_pressure()
        return self._answer(Outcome.ACCEPTED, evicted=evicted)

    def take(self) -> str | None:
        """Remove and return the next task for dispatch: highest priority, then oldest.

        Returns:
            The task id, or None when the queue is empty.
        """
        for priority in reversed(_PRIORITIES):
            if self._clean_head(priority):
                task_id = self._pop_head(priority)
                self._tallies[priority].taken += 1
                self._update_pressure()
                return task_id
        return None

    def remove(self, task_id: str) -> bool:
        """Withdraw a queued task (cancelled by its owner).

        Returns:
            Whether it was queued; False means it was already taken, evicted or removed.
        """
        key = self._key_of.pop(task_id, None)
        if key is None:
            return False
        self._tallies[key & 3].removed += 1
        self._stale += 1
        self._update_pressure()
        self._maybe_compact()
        return True

    def give_up(self, priority: Priority | str = Priority.NORMAL) -> None:
        """Count a blocked producer whose deadline passed as a rejection.

        The service answers it DEADLINE_EXCEEDED; counting it keeps "sum of outcomes
        equals tasks sent" true for block queues.
        """
        self._tallies[Priority.parse(priority)].rejected += 1

    # -- internals -----------------------------------------------------------------------

    def _answer(
        self,
        outcome: Outcome,
        *,
        evicted: tuple[tuple[str, EvictionReason], ...] = (),
        retry_after: float | None = None,
    ) -> Admission:
        return Admission(outcome, evicted, self._pressure, self.depth, retry_after)

    def _retry_hint(self, drain_rate: float | None) -> float:
        """Seconds until the depth should be below the low watermark at `drain_rate`.

        Without a rate the configured constant stands; with one, the estimate is kept
        between the configured floor and that constant, so a stalled queue does not
        tell producers to go away for hours and a fast one does not invite spinning.
        """
        ceiling = self._config.retry_after
        if drain_rate is None or drain_rate <= 0:
            return ceiling
        backlog = self.depth - self._low_mark + 1
        return min(ceiling, max(self._config.min_retry_after, backlog / drain_rate))

    def _update_pressure(self) -> None:
        depth = self.depth
        if not self._pressure and depth >= self._high_mark:
            self._pressure = True
        elif self._pressure and depth < self._low_mark:
            self._pressure = False
            self._blocked = False

    def _clean_head(self, priority: int) -> bool:
        """Drop stale slots at the lane's head; whether a live task remains in it."""
        lane = self._lanes[priority]
        while lane.keys:
            if self._key_of.get(lane.ids[0]) == lane.keys[0]:
                return True
            lane.keys.popleft()
            lane.ids.popleft()
            self._stale -= 1
        return False

    def _pop_head(self, priority: int) -> str:
        """Remove the lane's head, which `_clean_head` just found live."""
        lane = self._lanes[priority]
        lane.keys.popleft()
        task_id = lane.ids.popleft()
        del self._key_of[task_id]
        return task_id

    def _lowest_oldest(self) -> Priority:
        """The lowest priority with a queued task (called only when the queue is full)."""
        for priority in _PRIORITIES:
            if self._clean_head(priority):
                return priority
        raise AssertionError("a full queue has a queued task")  # pragma: no cover

    def _oldest(self) -> Priority:
        """The priority whose head arrived first (called only when the queue is full)."""
        best: Priority | None = None
        best_key = -1
        for priority in _PRIORITIES:
            if self._clean_head(priority):
                key = self._lanes[priority].keys[0]
                if best is None or key < best_key:
                    best, best_key = priority, key
        assert best is not None, "a full queue has a queued task"
        return best

    def _maybe_compact(self) -> None:
        """Sweep stale slots once they outnumber live ones, so removals cannot leak."""
        if self._stale <= max(_COMPACT_FLOOR, len(self._key_of)):
            return
        key_of = self._key_of
        for lane in self._lanes:
            live = [
                (key, task_id)
                for key, task_id in zip(lane.keys, lane.ids, strict=True)
                if key_of.get(task_id) == key
            ]
            lane.keys = deque(key for key, _ in live)
            lane.ids = deque(task_id for _, task_id in live)
        self._stale = 0
