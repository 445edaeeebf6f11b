"""The on-disk form of a log record: one JSON object per line.

Keys are the proto3 JSON names of `LogRecord` (``agentId``, ``taskId``) so that a line
reads like what grpcurl prints, except ``sequence``, which stays a plain number (proto3
JSON would quote an int64) because people `jq` and `sort -n` these files. Every key is
always present, so tools need no defaults.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from godel_grpc._proto.godel.v1 import log_record_pb2

LogRecord = log_record_pb2.LogRecord


def encode(record: LogRecord) -> bytes:
    """The record as one JSON line, newline included."""
    entry: dict[str, Any] = {
        "time": record.time.ToJsonString(),
        "level": record.level,
        "message": record.message,
        "agentId": record.agent_id,
        "taskId": record.task_id,
        "source": record.source,
        "fields": _whole_numbers(json_format.MessageToDict(record.fields)),
        "sequence": record.sequence,
    }
    return json.dumps(entry, ensure_ascii=False).encode() + b"\n"


def _whole_numbers(value: Any) -> Any:
    """Writes Struct's doubles that hold whole numbers as integers (``3``, not ``3.0``),
    as the agent most likely logged them."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def decode(line: bytes) -> LogRecord | None:
    """The record a line holds, or None for a line that is not one of ours.

    A torn last line (the disk filled up, the process was killed mid-write) must not
    stop a Tail, so anything unreadable is skipped rather than raised.
    """
    try:
        entry = json.loads(line)
        record = LogRecord(
            level=str(entry.get("level", "")),
            message=str(entry.get("message", "")),
            agent_id=str(entry.get("agentId", "")),
            task_id=str(entry.get("taskId", "")),
            source=str(entry.get("source", "")),
            sequence=int(entry.get("sequence", 0)),
        )
        if entry.get("time"):
            record.time.FromJsonString(entry["time"])
        if entry.get("fields"):
            record.fields.update(entry["fields"])
    except (ValueError, TypeError, AttributeError, json_format.ParseError):
        return None
    return record
