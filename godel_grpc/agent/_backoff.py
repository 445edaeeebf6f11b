"""Reconnect delays: exponential growth with full jitter."""

from __future__ import annotations

import random


class Backoff:
    """Delays between reconnect attempts.

    The ceiling doubles after each failure up to `maximum`, and each delay is drawn
    uniformly below it ("full jitter"): when a coordinator restarts, its whole fleet
    reconnects spread over the window instead of in synchronised waves.
    """

    def __init__(
        self, initial: float = 0.1, maximum: float = 5.0, rng: random.Random | None = None
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng or random.Random()
        self._failures = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # The exponent is capped so that a long outage cannot overflow the float.
        return min(self._maximum, self._initial * 2.0 ** min(self._failures, 62))

    def next_delay(self) -> float:
        """Returns the delay before the next attempt and raises the ceiling."""
        delay = self._rng.uniform(0, self.ceiling())
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Starts over from `initial`, after a connection that got as far as a welcome."""
        self._failures = 0
