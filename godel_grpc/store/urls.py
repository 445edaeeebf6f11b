"""Store URLs as they may appear in logs."""

from __future__ import annotations


def redact(url: str) -> str:
    """The store URL without user and password: `postgresql://host:5432/db`."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
