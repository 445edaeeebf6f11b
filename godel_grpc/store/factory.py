"""Turns a store URL from the configuration into an `EventStore`."""

from __future__ import annotations

import pathlib

from godel_grpc.store.base import EventStore
from godel_grpc.store.memory import InMemoryEventStore
from godel_grpc.store.sqlite import SqliteEventStore

DEFAULT_SQLITE_FILE = "events.db"


def open_store(url: str, data_dir: pathlib.Path) -> EventStore:
    """Builds the store `url` names; the caller still awaits its `open()`.

    Accepted forms:
        ``""`` or ``"sqlite://"``: SQLite at ``data_dir / "events.db"``.
        ``"sqlite:///abs/path.db"``: SQLite at that absolute path.
        ``"sqlite://rel/path.db"``: SQLite at ``data_dir / "rel/path.db"``.
        ``"memory://"``: an in-memory store that forgets everything on exit.
        ``"postgresql://user@host:port/db"`` (or ``postgres://``): PostgreSQL, as libpq
            URLs spell it; query parameters such as ``sslmode`` pass through.

    Raises:
        ValueError: for unknown schemes, so a typo fails at startup instead of silently
            writing somewhere else.
    """
    if not url:
        return SqliteEventStore(data_dir / DEFAULT_SQLITE_FILE)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"store URL {url!r} has no scheme; use sqlite://, postgresql://, memory:// or ''"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = pathlib.Path(rest) if rest else pathlib.Path(DEFAULT_SQLITE_FILE)
        return SqliteEventStore(path if path.is_absolute() else data_dir / path)
    if scheme == "memory":
        return InMemoryEventStore()
    if scheme in ("postgresql", "postgres"):
        # Imported here: asyncpg costs a few MiB of memory that a SQLite coordinator
        # has no use for.
        from godel_grpc.store.postgres import PostgresEventStore

        return PostgresEventStore(url)
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}")
