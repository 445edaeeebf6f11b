"""Bearer tokens, kept hashed in a file in the data directory.

Why a file and not events in the log: tokens must exist before anything can call the
coordinator (the first admin token is made with `godel token create` while the
coordinator may not be running, or is running and holds the event store), and the event
log is readable through the API (ListAgentEvents, SubscribeEvents), which should never
carry credential material, hashed or not. A small JSON file next to the store serves
both: the CLI and the coordinator update it under an advisory lock and replace it
atomically (write a temporary file, fsync, rename), and the coordinator re-reads it
whenever its inode, size or modification time changes. So `godel token revoke` takes
effect on the next call, with no restart and no RPC.

Only the SHA-256 of each token is stored; the token itself is shown once, at creation.
Tokens are 256 random bits, so a plain (unsalted) hash is enough: nothing to guess.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from godel_grpc.auth.scopes import AGENT, Principal

log = logging.getLogger(__name__)

TOKEN_PREFIX = "gdl_"
FILE_NAME = "tokens.json"


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


SPAWNED_REVOKED_KEPT = 24 * 3600.0
"""Seconds a spawned agent's revoked token stays listed (`godel token list`) before the
next mint drops it: swarms start and end agents all day, and an ever-growing file would
be reread, whole, after every change."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One token as stored: everything but the token itself."""

    id: str
    name: str
    sha256: str
    scopes: tuple[str, ...]
    agent: str = ""
    """The agent name an ``agent``-scoped token may open a link as."""
    created: float = 0.0
    revoked: float | None = None
    spawned: bool = False
    """Minted by the coordinator for an agent it spawned (revoked when it terminates)."""

    def principal(self) -> Principal:
        """The principal calls with this token act as."""
        return Principal(self.id, self.name, frozenset(self.scopes), self.agent)


@dataclass
class _Snapshot:
    stamp: tuple[int, int, int] | None = None
    by_hash: dict[str, TokenRecord] = field(default_factory=dict)


class TokenFile:
    """The token store of one data directory.

    Reading (`principal_for`) is cheap enough to run on every call: one `stat`, and a
    re-read only when the file changed. Writing locks, reads afresh, replaces.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock_path = Path(data_dir) / (FILE_NAME + ".lock")
        self._snapshot = _Snapshot()

    # -- reading -----------------------------------------------------------------------

    def records(self) -> list[TokenRecord]:
        """Every token, revoked ones included, oldest first."""
        return _read(self.path)

    def principal_for(self, token: str) -> Principal | None:
        """The principal of a presented token; None when unknown or revoked."""
        self._refresh()
        record = self._snapshot.by_hash.get(hash_token(token))
        if record is None or record.revoked is not None:
            return None
        return record.principal()

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._snapshot = _Snapshot()
            return
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._snapshot.stamp:
            return
        try:
            records = _read(self.path)
        except (ValueError, TypeError) as exc:  # a hand-edited file gone wrong
            # Fail closed: no token is accepted until the file reads again.
            log.error("the token file %s does not read (%s); refusing every token", self.path, exc)
            records = []
        self._snapshot = _Snapshot(stamp, {r.sha256: r for r in records})

    # -- writing -----------------------------------------------------------------------

    def create(
        self,
        scopes: frozenset[str],
        *,
        name: str = "",
        agent: str = "",
        spawned: bool = False,
    ) -> tuple[TokenRecord, str]:
        """Makes a token; returns its record and the token (shown once, never stored).

        Raises:
            ValueError: the name is taken, or an ``agent`` token names no agent.
        """
        if AGENT in scopes and not agent:
            raise ValueError("a token with the agent scope must be bound to an agent name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tk-" + secrets.token_hex(6)
        record = TokenRecord(
            id=token_id,
            name=name or token_id,
            sha256=hash_token(token),
            scopes=tuple(sorted(scopes)),
            agent=agent,
            created=time.time(),
            spawned=spawned,
        )
        with self._locked() as records:
            if any(r.name == record.name and r.revoked is None for r in records):
                raise ValueError(f"a token named {record.name!r} exists; revoke it first")
            if spawned:
                records[:] = [r for r in records if not _spent(r, record.created)]
            records.append(record)
        return record, token

    def revoke(self, id_or_name: str) -> TokenRecord:
        """Revokes the live token with this id or name; returns it.

        Raises:
            KeyError: no live token has that id or name.
        """
        with self._locked() as records:
            for index, record in enumerate(records):
                if record.revoked is None and id_or_name in (record.id, record.name):
                    revoked = TokenRecord(**{**asdict(record), "revoked": time.time()})
                    records[index] = revoked
                    return revoked
        raise KeyError(id_or_name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        """The records, to change in place; written back atomically on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = _read(self.path)
            yield records
            _write(self.path, records)


def _spent(record: TokenRecord, now: float) -> bool:
    """A spawned agent's token revoked longer ago than `SPAWNED_REVOKED_KEPT`."""
    return (
        record.spawned
        and record.revoked is not None
        and now - record.revoked > SPAWNED_REVOKED_KEPT
    )


def _read(path: Path) -> list[TokenRecord]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    data = json.loads(text)
    out = []
    for raw in data.get("tokens", []):
        raw["scopes"] = tuple(raw.get("scopes", ()))
        out.append(TokenRecord(**raw))
    return out


def _write(path: Path, records: list[TokenRecord]) -> None:
    body = json.dumps({"version": 1, "tokens": [asdict(r) for r in records]}, indent=1)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tokens-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
