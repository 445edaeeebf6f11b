"""Pages over the resources a manager keeps in memory, for the List RPCs.

A page token is the id of the last resource of the previous page, so a page stays
right while resources are added after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from godel_grpc.errors import FieldViolation, InvalidArgument

R = TypeVar("R")
P = TypeVar("P")

DEFAULT_PAGE_SIZE = 100
NOT_A_TOKEN = "is not a token from a previous page"


def page_of(
    records: Sequence[R],
    key: Callable[[R], str],
    show: Callable[[R], P],
    page_size: int,
    page_token: str,
    keep: Callable[[P], bool] | None = None,
) -> tuple[list[P], str]:
    """One page of `records` in their order, and the token of the next page.

    Args:
        records: everything that could be listed, in list order.
        key: a record's id, used as the page token.
        show: the record as the API shows it.
        page_size: largest page; 0 means `DEFAULT_PAGE_SIZE`.
        page_token: `key` of the previous page's last record, or "" for the first page.
        keep: a filter on what `show` returned (for example a state); None keeps all.

    Raises:
        InvalidArgument: for a token no page handed out.
    """
    start = 0
    if page_token:
        ids = [key(record) for record in records]
        if page_token not in ids:
            raise InvalidArgument([FieldViolation("pageToken", NOT_A_TOKEN)])
        start = ids.index(page_token) + 1
    size = page_size or DEFAULT_PAGE_SIZE
    page: list[P] = []
    last = ""
    for record in records[start:]:
        shown = show(record)
        if keep is not None and not keep(shown):
            continue
        if len(page) == size:
            return page, last
        page.append(shown)
        last = key(record)
    return page, ""
