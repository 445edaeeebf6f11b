"""Paging over in-memory resources: every item once, in order, across pages."""

from __future__ import annotations

import pytest

from godel_grpc.core.paging import page_of
from godel_grpc.errors import InvalidArgument

ITEMS = [(f"r-{i}", i % 3) for i in range(10)]


def walk(size: int, keep=None) -> list[list[str]]:  # type: ignore[no-untyped-def]
    pages, token = [], ""
    while True:
        page, token = page_of(ITEMS, lambda r: r[0], lambda r: r, size, token, keep)
        pages.append([item[0] for item in page])
        if not token:
            return pages


def test_every_item_once_in_order() -> None:
    assert walk(4) == [["r-0", "r-1", "r-2", "r-3"], ["r-4", "r-5", "r-6", "r-7"], ["r-8", "r-9"]]
    assert walk(5) == [["r-0", "r-1", "r-2", "r-3", "r-4"], ["r-5", "r-6", "r-7", "r-8", "r-9"]]


def test_a_filter_never_leaves_an_empty_last_page() -> None:
    # Items with state 0 are r-0, r-3, r-6, r-9: a page of two ends exactly at the end
    assert walk(2, lambda r: r[1] == 0) == [["r-0", "r-3"], ["r-6", "r-9"]]


def test_a_made_up_token_is_refused() -> None:
    with pytest.raises(InvalidArgument) as raised:
        page_of(ITEMS, lambda r: r[0], lambda r: r, 2, "r-404")
    assert raised.value.violations[0].field == "pageToken"
