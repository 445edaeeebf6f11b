"""The reflex policy: EWMA score, lessons, memory limits, preference without starvation."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from godel_grpc.patterns.reflex import (
    FLOOR,
    MAX_KEY_CHARS,
    MAX_LESSON_CHARS,
    MAX_LESSONS,
    MAX_MEMORY_BYTES,
    MAX_MEMORY_KEYS,
    MAX_VALUE_BYTES,
    MemoryLimitError,
    Score,
    add_lesson,
    check_memory_write,
    choose,
    effective_rate,
    encoded_size,
    preference_weight,
)

ratings = st.floats(min_value=0, max_value=5, allow_nan=False)
rates = st.floats(min_value=0.001, max_value=1, allow_nan=False)


# -- score -----------------------------------------------------------------------------


def test_first_rating_sets_the_score_then_each_rating_weighs_the_rate() -> None:
    # Given the seed's rate 0.1, when rated 4.5 then 2, then the mean follows the formula
    score = Score().fold(4.5, 0.1)
    assert (score.value, score.count) == (4.5, 1)
    score = score.fold(2.0, 0.1)
    assert score.value == pytest.approx(0.9 * 4.5 + 0.1 * 2.0)
    assert score.count == 2


def test_unrated_agent_has_no_score() -> None:
    assert Score().value is None and Score().count == 0


@pytest.mark.parametrize("rating", [-0.1, 5.01, float("nan"), float("inf")])
def test_rating_out_of_range_is_refused(rating: float) -> None:
    with pytest.raises(ValueError, match="rating"):
        Score().fold(rating, 0.1)


def test_zero_rate_means_the_default() -> None:
    assert effective_rate(0) == 0.1
    assert effective_rate(0.5) == 0.5


@given(st.lists(ratings, min_size=1, max_size=50), rates)
def test_score_stays_within_the_ratings_seen(values: list[float], rate: float) -> None:
    # A weighted mean never leaves the range of what it averages.
    score = Score()
    for rating in values:
        score = score.fold(rating, rate)
    assert score.value is not None
    assert min(values) - 1e-9 <= score.value <= max(values) + 1e-9
    assert score.count == len(values)


@given(st.lists(ratings, min_size=1, max_size=30), rates)
def test_score_equals_the_closed_form(values: list[float], rate: float) -> None:
    # s_n = (1-a)^(n-1) r_1 + sum_{k>=2} a (1-a)^(n-k) r_k
    score = Score()
    for rating in values:
        score = score.fold(rating, rate)
    n = len(values)
    expected = (1 - rate) ** (n - 1) * values[0] + sum(
        rate * (1 - rate) ** (n - k) * values[k - 1] for k in range(2, n + 1)
    )
    assert score.value == pytest.approx(expected, abs=1e-9)


@given(ratings, ratings, rates)
def test_a_better_rating_never_lowers_the_score(low: float, high: float, rate: float) -> None:
    low, high = min(low, high), max(low, high)
    base = Score().fold(2.5, 0.5)
    assert base.fold(high, rate).value >= base.fold(low, rate).value  # type: ignore[operator]


# -- lessons ---------------------------------------------------------------------------


def test_lessons_keep_the_newest_and_skip_blank_comments() -> None:
    lessons: tuple[str, ...] = ()
    for index in range(MAX_LESSONS + 3):
        lessons = add_lesson(lessons, f"lesson {index}")
    lessons = add_lesson(lessons, "   ")
    assert lessons == tuple(f"lesson {i}" for i in range(3, MAX_LESSONS + 3))


@given(st.lists(st.text(max_size=2000), max_size=20))
def test_lessons_stay_bounded(comments: list[str]) -> None:
    lessons: tuple[str, ...] = ()
    for comment in comments:
        lessons = add_lesson(lessons, comment)
    assert len(lessons) <= MAX_LESSONS
    assert all(0 < len(lesson) <= MAX_LESSON_CHARS for lesson in lessons)


# -- preference ------------------------------------------------------------------------


@given(st.one_of(st.none(), ratings), st.one_of(st.none(), ratings))
def test_weight_grows_with_score_and_never_drops_below_the_floor(
    a: float | None, b: float | None
) -> None:
    assert preference_weight(a) >= FLOOR and preference_weight(b) >= FLOOR
    if a is not None and b is not None and a <= b:
        assert preference_weight(a) <= preference_weight(b)


def test_the_better_agent_gets_most_tasks_and_the_worse_one_some() -> None:
    # Given agents scored 1 and 5, when 10,000 tasks are drawn with a fixed seed
    uniform = random.Random(7).random
    counts = Counter(choose([("bad", 1.0), ("good", 5.0)], uniform) for _ in range(10_000))
    # Then the good one gets about 92% and the bad one still about 8%
    assert 0.89 < counts["good"] / 10_000 < 0.95
    assert counts["bad"] > 500


@given(
    st.lists(st.one_of(st.none(), ratings), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2**32),
)
def test_every_candidate_can_be_chosen_and_only_candidates(
    scores: list[float | None], seed: int
) -> None:
    candidates = [(f"a{i}", score) for i, score in enumerate(scores)]
    uniform = random.Random(seed).random
    assert choose(candidates, uniform) in {name for name, _ in candidates}
    # Each candidate owns a slice of [0, 1) at least FLOOR/total wide: drawing the
    # middle of its slice picks it, so no agent is ever starved by construction.
    total = sum(preference_weight(s) for s in scores)
    start = 0.0
    for name, score in candidates:
        width = preference_weight(score) / total
        assert choose(candidates, lambda: start + width / 2) == name  # noqa: B023
        start += width


def test_choose_needs_candidates() -> None:
    with pytest.raises(ValueError):
        choose([], random.random)


# -- memory limits ---------------------------------------------------------------------


def test_memory_limits_name_what_was_exceeded() -> None:
    with pytest.raises(MemoryLimitError, match="empty"):
        check_memory_write({}, "", 1)
    with pytest.raises(MemoryLimitError, match="characters"):
        check_memory_write({}, "k" * (MAX_KEY_CHARS + 1), 1)
    with pytest.raises(MemoryLimitError, match="bytes as JSON"):
        check_memory_write({}, "k", MAX_VALUE_BYTES + 1)
    full = {f"k{i}": 1 for i in range(MAX_MEMORY_KEYS)}
    with pytest.raises(MemoryLimitError, match="keys"):
        check_memory_write(full, "another", 1)
    check_memory_write(full, "k0", 2)  # overwriting an existing key is fine
    check_memory_write(full, "another", None)  # so is a delete
    big = {f"k{i}": MAX_VALUE_BYTES for i in range(MAX_MEMORY_BYTES // MAX_VALUE_BYTES - 1)}
    with pytest.raises(MemoryLimitError, match="would hold"):
        check_memory_write(big, "last", MAX_VALUE_BYTES)


def test_encoded_size_is_compact_json_and_refuses_non_json() -> None:
    assert encoded_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    with pytest.raises(MemoryLimitError, match="JSON"):
        encoded_size({1, 2})
    with pytest.raises(MemoryLimitError, match="JSON"):
        encoded_size(float("nan"))
