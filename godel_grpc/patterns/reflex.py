"""Reflex policy: an agent's score, its recent lessons, its memory limits, and how the
scheduler prefers better-scored agents without starving the others.

Score. Ratings run from 0 (useless) to 5 (perfect). The score is their exponentially
weighted mean with the agent's adaptation rate `a` as the weight of the newest rating:

    s_1 = r_1                      (the first rating sets the score)
    s_n = (1 - a) * s_(n-1) + a * r_n

The first rating starts the mean instead of a neutral prior (say 2.5) because a prior
is a rating nobody gave: with the seed's rate of 0.1, a prior would still weigh 35% after
ten real ratings, and an agent rated 1 ten times would sit at 1.5 for no reason anyone
could point to. Before any rating an agent has no score (None), which is not the same as
a score of 0; the scheduler treats it as `NEUTRAL_SCORE`.

Preference. Among agents that could take a task now, `choose` draws one at random with
weight `preference_weight(score)`: `FLOOR + (score / 5) ** 2`. The square makes the
preference clear (an agent at 5 gets about twelve times the share of one at 1), and the
floor keeps every agent in the draw (an agent at 0 still gets about one task in twenty
next to one at 5), so a low-scored agent keeps getting the work that could earn it a
better score. Randomness is passed in, so tests and replays can fix it.

Nothing here does I/O or knows about protobuf; the core folds events and asks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ADAPTATION_RATE",
    "FLOOR",
    "MAX_KEY_CHARS",
    "MAX_LESSONS",
    "MAX_LESSON_CHARS",
    "MAX_MEMORY_BYTES",
    "MAX_MEMORY_KEYS",
    "MAX_RATING",
    "MAX_VALUE_BYTES",
    "NEUTRAL_SCORE",
    "MemoryLimitError",
    "Score",
    "add_lesson",
    "check_memory_write",
    "choose",
    "effective_rate",
    "encoded_size",
    "preference_weight",
]

MAX_RATING = 5.0
"""The best rating; the worst is 0."""
DEFAULT_ADAPTATION_RATE = 0.1
"""The seed's rate, used when a reflex config leaves `adaptationRate` at 0."""
NEUTRAL_SCORE = MAX_RATING / 2
"""What the scheduler assumes of an agent nobody has rated yet."""
FLOOR = 0.05
"""Smallest preference weight: even an agent scored 0 stays in the draw."""

MAX_LESSONS = 5
"""Recent feedback comments kept per agent and sent with each assignment."""
MAX_LESSON_CHARS = 512
"""A lesson longer than this is cut (with an ellipsis): it travels with every task."""

MAX_MEMORY_KEYS = 256
"""Keys one agent's memory may hold."""
MAX_KEY_CHARS = 128
"""Longest memory key, in characters."""
MAX_VALUE_BYTES = 16 * 1024
"""Largest memory value, as compact JSON, in bytes."""
MAX_MEMORY_BYTES = 1024 * 1024
"""Largest total of one agent's memory (keys plus JSON values), in bytes: the whole
memory travels in the welcome, which must stay well under a link message's 4 MiB."""


@dataclass(frozen=True, slots=True)
class Score:
    """An agent's score so far.

    Attributes:
        value: the exponentially weighted mean of its ratings, 0 to 5; None before the
            first rating.
        count: ratings folded in so far.
    """

    value: float | None = None
    count: int = 0

    def fold(self, rating: float, rate: float) -> Score:
        """The score after one more rating.

        Args:
            rating: 0 to 5.
            rate: weight of this rating, 0 (exclusive) to 1.

        Raises:
            ValueError: for a rating or rate out of range (or not a number).
        """
        if not (math.isfinite(rating) and 0.0 <= rating <= MAX_RATING):
            raise ValueError(f"rating must be between 0 and {MAX_RATING:g}, got {rating!r}")
        if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
            raise ValueError(f"adaptation rate must be in (0, 1], got {rate!r}")
        if self.value is None:
            return Score(rating, self.count + 1)
        value = (1.0 - rate) * self.value + rate * rating
        # Rounding may step a hair outside the ratings' range; the range is a promise.
        return Score(min(MAX_RATING, max(0.0, value)), self.count + 1)


def effective_rate(configured: float) -> float:
    """The adaptation rate in force: the configured one, or the default when it is 0
    (a rate of 0 would make every rating after the first meaningless)."""
    return configured if configured > 0 else DEFAULT_ADAPTATION_RATE


def add_lesson(lessons: Sequence[str], comment: str) -> tuple[str, ...]:
    """The recent lessons after one more comment: newest last, at most `MAX_LESSONS`,
    each at most `MAX_LESSON_CHARS`. A blank comment teaches nothing and is skipped."""
    text = comment.strip()
    if not text:
        return tuple(lessons)
    if len(text) > MAX_LESSON_CHARS:
        text = text[: MAX_LESSON_CHARS - 1] + "…"
    return (*lessons, text)[-MAX_LESSONS:]


def preference_weight(score: float | None) -> float:
    """How strongly the scheduler prefers an agent: `FLOOR + (score/5)**2`, with
    `NEUTRAL_SCORE` for an agent not rated yet. Always at least `FLOOR`."""
    value = NEUTRAL_SCORE if score is None else min(MAX_RATING, max(0.0, score))
    return FLOOR + (value / MAX_RATING) ** 2


def choose(candidates: Sequence[tuple[str, float | None]], uniform: Callable[[], float]) -> str:
    """Draws one agent, each with probability proportional to its preference weight.

    Args:
        candidates: (agent id, score or None) of the agents that could take the task.
        uniform: returns a number in [0, 1), e.g. ``random.Random(seed).random``.

    Raises:
        ValueError: with no candidates.
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    weights = [preference_weight(score) for _, score in candidates]
    point = uniform() * sum(weights)
    for (agent_id, _), weight in zip(candidates, weights, strict=True):
        point -= weight
        if point < 0:
            return agent_id
    return candidates[-1][0]  # only reached through rounding at the very top


class MemoryLimitError(ValueError):
    """A memory write that would break one of the memory limits; the message says which."""


def encoded(value: object) -> str:
    """A memory value as compact JSON, the form its size limit is counted in.

    Raises:
        MemoryLimitError: when the value is not JSON.
    """
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MemoryLimitError(f"memory values must be JSON: {exc}") from None


def encoded_size(value: object) -> int:
    """Bytes of a memory value as compact JSON.

    Raises:
        MemoryLimitError: when the value is not JSON.
    """
    return len(encoded(value).encode())


def check_memory_write(sizes: Mapping[str, int], key: str, value_bytes: int | None) -> None:
    """Checks one write against the memory limits.

    Args:
        sizes: the memory as it is, key → `encoded_size` of its value.
        key: the key written.
        value_bytes: `encoded_size` of the new value; None for a delete.

    Raises:
        MemoryLimitError: naming the limit the write would break.
    """
    if not key:
        raise MemoryLimitError("memory keys must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise MemoryLimitError(f"memory key is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
    if value_bytes is None:
        return
    if value_bytes > MAX_VALUE_BYTES:
        raise MemoryLimitError(
            f"memory value for {key!r} is {value_bytes} bytes as JSON; "
            f"the limit is {MAX_VALUE_BYTES}"
        )
    if key not in sizes and len(sizes) >= MAX_MEMORY_KEYS:
        raise MemoryLimitError(f"memory already holds {MAX_MEMORY_KEYS} keys, the limit")
    total = sum(len(k) + v for k, v in sizes.items() if k != key) + len(key) + value_bytes
    if total > MAX_MEMORY_BYTES:
        raise MemoryLimitError(f"memory would hold {total} bytes; the limit is {MAX_MEMORY_BYTES}")
