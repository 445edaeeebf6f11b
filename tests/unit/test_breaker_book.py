"""The book of every agent's breaker: what it exports and schedules as results arrive.

Most results change nothing (the breaker stays CLOSED), and the book skips its timer
work for them; these tests hold that `godel_circuit_state`, the transitions and the
probe timer still follow every change of state.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from godel_grpc.core.breakers import BreakerBook
from godel_grpc.metrics import CoordinatorMetrics
from godel_grpc.patterns.breaker import BreakerConfig, Transition


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Book:
    """A `BreakerBook` with its own registry, recording what it reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        metrics = CoordinatorMetrics(self.registry)
        self.clock = Clock()
        self.probes: list[str] = []
        self.probed = asyncio.Event()
        self.changes: list[tuple[str, str]] = []
        self.book = BreakerBook(
            metrics.circuit_transitions,
            on_probe_due=self._probe,
            on_transition=self._changed,
            clock=self.clock,
        )
        metrics.watch_circuits(self.book.metric_rows)

    def _probe(self, agent_id: str) -> None:
        self.probes.append(agent_id)
        self.probed.set()

    def _changed(self, agent_id: str, change: Transition, _comment: str) -> None:
        self.changes.append((agent_id, change.to_state.value))

    def gauge(self, name: str) -> float | None:
        return self.registry.get_sample_value("godel_circuit_state", {"agent": name})


async def test_the_gauge_and_transitions_follow_the_breaker_through_every_state() -> None:
    book = Book()
    config = BreakerConfig(failure_threshold=2, timeout=5.0, half_open_requests=1)
    book.book.attach("a1", "alpha", config)
    assert book.gauge("alpha") == 0
    # Successes and a first failure change nothing
    for _ in range(3):
        assert book.book.record("a1", True, 0.01) == []
    assert book.book.record("a1", False, 0.01) == []
    assert book.gauge("alpha") == 0 and book.changes == []
    # The second failure in a row opens it
    (opened,) = book.book.record("a1", False, 0.01)
    assert opened.to_state.value == "OPEN"
    assert book.gauge("alpha") == 1
    assert book.changes == [("a1", "OPEN")]
    # A late failure while open changes nothing
    assert book.book.record("a1", False, 0.01) == []
    assert book.gauge("alpha") == 1
    # After the timeout a scrape reads it half-open, without moving it itself
    book.clock.now += 5.0
    assert book.gauge("alpha") == 2
    assert book.changes == [("a1", "OPEN")]
    # A trial is allowed; its success closes the breaker
    assert book.book.allow("a1")
    changes = book.book.record("a1", True, 0.01)
    assert [c.to_state.value for c in changes] == ["HALF_OPEN", "CLOSED"]
    assert book.gauge("alpha") == 0
    assert book.changes == [("a1", "OPEN"), ("a1", "HALF_OPEN"), ("a1", "CLOSED")]
    book.book.detach("a1")
    assert book.gauge("alpha") is None


async def test_an_opened_breaker_calls_for_a_probe_when_its_timeout_runs_out() -> None:
    book = Book()
    book.book.attach("a1", "alpha", BreakerConfig(failure_threshold=1, timeout=0.05))
    book.book.record("a1", True, 0.01)  # a result that changes nothing sets no timer
    book.book.record("a1", False, 0.01)
    assert book.gauge("alpha") == 1
    book.clock.now += 0.05
    await asyncio.wait_for(book.probed.wait(), 5)
    assert book.probes == ["a1"]
    assert book.gauge("alpha") == 2  # half-open, published when the timer fired
