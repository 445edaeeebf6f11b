"""Severity order of log records, and the filters built on it.

The wire carries levels as the four strings of `LogRecord.level`; an empty level means
"info" (the proto says so), which keeps agents that never set one out of trouble.
"""

from __future__ import annotations

from dataclasses import dataclass

from godel_grpc._proto.godel.v1 import log_record_pb2

LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def severity(level: str) -> int:
    """Rank of `level` (higher is more severe); empty counts as "info".

    Raises:
        KeyError: for a level outside `LEVELS`.
    """
    return _RANK[level or "info"]


@dataclass(frozen=True, slots=True)
class LevelFilter:
    """Keeps records at or above a minimum level."""

    minimum: str = "debug"

    def __post_init__(self) -> None:
        severity(self.minimum)  # fail at configuration time, not per record

    def keeps(self, level: str) -> bool:
        """Whether a record at `level` passes."""
        return severity(level) >= severity(self.minimum)


@dataclass(frozen=True, slots=True)
class TailFilter:
    """What a Tail caller asked to see: a minimum level and, optionally, one task."""

    min_level: str = ""
    task_id: str = ""

    def matches(self, record: log_record_pb2.LogRecord) -> bool:
        """Whether `record` belongs in the caller's stream."""
        if self.task_id and record.task_id != self.task_id:
            return False
        if not self.min_level:
            return True
        return severity(record.level) >= severity(self.min_level)
