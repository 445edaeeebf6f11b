"""Per-principal request rate limits: one token bucket per principal.

Pure policy with an injected clock. A call takes one token; a bucket refills at `rate`
tokens per second up to `burst`. A refused call learns how long until a token is
there, which the caller sees as `google.rpc.RetryInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by principal id.

    The number of buckets is bounded by the number of principals (tokens in the token
    file plus the local principal), so the map cannot grow with callers' input.

    Args:
        rate: tokens per second; 0 or less turns limiting off.
        burst: bucket size, the most calls admitted at once after a quiet spell.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """Takes a token for `key` at time `now` (seconds).

        Returns:
            0.0 when the call is admitted, else the seconds until a token is available.
        """
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
