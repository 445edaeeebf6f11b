"""The log files: one active JSON-lines file and a few numbered backups.

``agent.log`` grows until the next line would take it past `max_bytes`; then it becomes
``agent.log.1``, the previous ``.1`` becomes ``.2`` and so on, and whatever would become
``.N+1`` is deleted. Disk use stays below roughly ``(backups + 1) * max_bytes`` however
chatty the agent is.

Blocking file I/O lives here and nowhere else; callers run it in a worker thread and
make sure only one thread touches the files at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
_BLOCK = 64 * 1024


class RotatingJsonLines:
    """Appends lines with size-based rotation and reads them back newest first.

    Not thread-safe: one thread at a time.
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "agent.log",
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ) -> None:
        """Opens (creating it if needed) the active file for appending.

        Args:
            directory: where the files live; created if missing.
            name: the active file's name; backups add ``.1`` … ``.N``.
            max_bytes: size that triggers a rotation, at least 1.
            backups: rotated files kept, 0 or more (0 truncates instead).

        Raises:
            ValueError: for a non-positive `max_bytes` or negative `backups`.
            OSError: when the directory or file cannot be created.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if backups < 0:
            raise ValueError("backups must not be negative")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self._max_bytes = max_bytes
        self._backups = backups
        self._file: BinaryIO = self.path.open("ab")
        self._size = self._file.tell()

    def write(self, lines: Sequence[bytes]) -> None:
        """Appends complete lines (each ending in a newline) and flushes them.

        A line is never split across files; one bigger than `max_bytes` gets a file
        of its own.
        """
        for line in lines:
            if self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            self._file.write(line)
            self._size += len(line)
        self._file.flush()

    def files(self) -> list[Path]:
        """The files that exist, newest first."""
        candidates = [self.path, *(self._backup(n) for n in range(1, self._backups + 1))]
        return [path for path in candidates if path.exists()]

    def lines_newest_first(self) -> Iterator[bytes]:
        """Every stored line, from the last written back to the oldest kept.

        Reads each file backwards in blocks, so asking for the last few lines of a
        full set of files costs a few blocks, not the whole set.
        """
        for path in self.files():
            try:
                yield from _backwards(path)
            except FileNotFoundError:
                continue  # rotated away while we read; the next file has it

    def close(self) -> None:
        """Flushes and closes the active file."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def _backup(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _rotate(self) -> None:
        self._file.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            # os.replace overwrites, so the oldest backup falls off the end here.
            for number in range(self._backups - 1, 0, -1):
                if self._backup(number).exists():
                    os.replace(self._backup(number), self._backup(number + 1))
            os.replace(self.path, self._backup(1))
        self._file = self.path.open("ab")
        self._size = 0


def _backwards(path: Path) -> Iterator[bytes]:
    """The non-empty lines of `path`, last first, without their newlines."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        carry = b""
        while position > 0:
            step = min(_BLOCK, position)
            position -= step
            file.seek(position)
            parts = (file.read(step) + carry).split(b"\n")
            carry = parts[0]  # may continue in the block before this one
            for line in reversed(parts[1:]):
                if line:
                    yield line
        if carry:
            yield carry
