"""Validates requests against the declarative rules written in the protos.

Constraints live next to the fields they constrain (`[(godel.v1.rules) = {...}]`), so
every client sees them in the API and every servicer gets the same checks from this one
walker. Rules are compiled once per message type and cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from godel_grpc._proto.godel.v1 import options_pb2
from godel_grpc.errors import FieldViolation, InvalidArgument

_MAX_VIOLATIONS = 50


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    field: FieldDescriptor
    json_name: str
    rules: options_pb2.FieldRules | None
    regex: re.Pattern[str] | None
    nested: bool
    enum_values: frozenset[int] | None
    time_type: str


@dataclass(frozen=True, slots=True)
class _MessagePlan:
    by_number: dict[int, _FieldCheck]
    """Checks of fields that have rules, looked up only for fields that are set."""
    when_unset: tuple[_FieldCheck, ...]
    """Checks that an unset field can fail (required, or a minimum above zero)."""
    required_oneofs: tuple[str, ...]


def _fails_when_unset(rules: options_pb2.FieldRules | None) -> bool:
    if rules is None:
        return False
    return (
        rules.required
        or (rules.HasField("min") and rules.min > 0)
        or (rules.HasField("max") and rules.max < 0)
    )


def _rules_of(field: FieldDescriptor) -> options_pb2.FieldRules | None:
    options = field.GetOptions()
    if options.HasExtension(options_pb2.rules):
        return options.Extensions[options_pb2.rules]
    return None


@functools.cache
def _plan(descriptor: Descriptor) -> _MessagePlan:
    checks = []
    for field in descriptor.fields:
        rules = _rules_of(field)
        message_type = field.message_type
        is_map = message_type is not None and message_type.GetOptions().map_entry
        nested = message_type is not None and not is_map and message_type.file.package == "godel.v1"
        enum_type = field.enum_type
        is_enum = enum_type is not None
        is_time = message_type is not None and message_type.full_name in _TIME_TYPES
        if rules is None and not nested and not is_enum and not is_time:
            continue
        regex = re.compile(rules.pattern) if rules is not None and rules.pattern else None
        enum_values = (
            frozenset(v.number for v in enum_type.values) if enum_type is not None else None
        )
        checks.append(
            _FieldCheck(
                field,
                field.json_name,
                rules,
                regex,
                nested,
                enum_values,
                message_type.full_name if is_time and message_type is not None else "",
            )
        )
    oneofs = tuple(
        oneof.name
        for oneof in descriptor.oneofs
        if oneof.GetOptions().Extensions[options_pb2.oneof_required]
    )
    return _MessagePlan(
        {check.field.number: check for check in checks},
        tuple(check for check in checks if _fails_when_unset(check.rules)),
        oneofs,
    )


def violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Returns every rule `message` breaks, with JSON-style field paths."""
    found: list[FieldViolation] = []
    _walk(message, prefix, found)
    return found[:_MAX_VIOLATIONS]


def validate(message: Message) -> None:
    """Raises InvalidArgument listing every broken rule of `message`, if any."""
    found = violations(message)
    if found:
        raise InvalidArgument(found)


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(message: Message, prefix: str, found: list[FieldViolation]) -> None:
    plan = _plan(message.DESCRIPTOR)
    for oneof in plan.required_oneofs:
        if message.WhichOneof(oneof) is None:
            members = " or ".join(
                f.json_name for f in message.DESCRIPTOR.oneofs_by_name[oneof].fields
            )
            found.append(
                FieldViolation(_path(prefix, oneof), f"exactly one of {members} is required")
            )
    seen: set[int] = set()
    for field, value in message.ListFields():
        check = plan.by_number.get(field.number)
        if check is not None:
            seen.add(field.number)
            _run(check, value, message, prefix, found)
    for check in plan.when_unset:
        if check.field.number not in seen:
            _run(check, getattr(message, check.field.name), message, prefix, found)


def _run(
    check: _FieldCheck, value: Any, message: Message, prefix: str, found: list[FieldViolation]
) -> None:
    field = check.field
    path = _path(prefix, check.json_name)
    repeated = field.is_repeated
    if check.enum_values is not None:
        for number in value if repeated else [value]:
            if number not in check.enum_values:
                found.append(FieldViolation(path, f"unknown enum value {number}"))
    if check.time_type and not repeated and message.HasField(field.name):
        problem = _time_problem(check.time_type, value)
        if problem:
            found.append(FieldViolation(path, problem))
    if check.rules is not None:
        _check_rules(check, value, repeated, message, path, found)
    if check.nested and len(found) < _MAX_VIOLATIONS:
        if repeated:
            for index, item in enumerate(value):
                _walk(item, f"{path}[{index}]", found)
        elif message.HasField(field.name):
            _walk(value, path, found)


def _check_rules(
    check: _FieldCheck,
    value: object,
    repeated: bool,
    message: Message,
    path: str,
    found: list[FieldViolation],
) -> None:
    rules = check.rules
    assert rules is not None
    field = check.field
    add: Callable[[str], None] = lambda text: found.append(FieldViolation(path, text))  # noqa: E731
    if repeated:
        items = cast("Sized", value)  # a repeated field or a map
        size = len(items)
        if rules.required and size == 0:
            add("is required")
        if rules.max_len and size > rules.max_len:
            add(f"has {size} entries; at most {rules.max_len} allowed")
        if field.type == FieldDescriptor.TYPE_STRING:
            for index, item in enumerate(cast("Iterable[str]", items)):
                _check_scalar(rules, check.regex, item, f"{path}[{index}]", found, in_list=True)
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        present = message.HasField(field.name)
        if present and check.time_type == "google.protobuf.Duration":
            seconds = value.ToNanoseconds() / 1e9  # type: ignore[attr-defined]
            if rules.HasField("min") and seconds < rules.min:
                add(f"must be at least {_fmt(rules.min)} s; got {_fmt(seconds)} s")
            if rules.HasField("max") and seconds > rules.max:
                add(f"must be at most {_fmt(rules.max)} s; got {_fmt(seconds)} s")
        if rules.required and not present:
            add("is required")
        if present and rules.max_bytes and value.ByteSize() > rules.max_bytes:  # type: ignore[attr-defined]
            add(f"is {value.ByteSize()} bytes; at most {rules.max_bytes} allowed")  # type: ignore[attr-defined]
        return
    _check_scalar(rules, check.regex, value, path, found, in_list=False)


def _check_scalar(
    rules: options_pb2.FieldRules,
    regex: re.Pattern[str] | None,
    value: object,
    path: str,
    found: list[FieldViolation],
    *,
    in_list: bool,
) -> None:
    if isinstance(value, str):
        if not value:
            if rules.required or in_list:
                found.append(
                    FieldViolation(path, "is required" if not in_list else "must not be empty")
                )
            return
        if not in_list and rules.max_len and len(value) > rules.max_len:
            found.append(
                FieldViolation(path, f"is {len(value)} characters; at most {rules.max_len} allowed")
            )
        elif in_list and len(value) > 256:
            found.append(FieldViolation(path, "is longer than 256 characters"))
        if getattr(rules, "in") and value not in getattr(rules, "in"):
            allowed = ", ".join(repr(v) for v in getattr(rules, "in"))
            found.append(FieldViolation(path, f"must be one of {allowed}; got {value!r}"))
        if regex is not None and not regex.fullmatch(value):
            found.append(FieldViolation(path, f"must match {regex.pattern!r}"))
        return
    if isinstance(value, bytes):
        if rules.required and not value:
            found.append(FieldViolation(path, "is required"))
        if rules.max_len and len(value) > rules.max_len:
            found.append(
                FieldViolation(path, f"is {len(value)} bytes; at most {rules.max_len} allowed")
            )
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if rules.required and not value:
            found.append(FieldViolation(path, "is required"))
        if value != value:  # NaN
            found.append(FieldViolation(path, "must be a number"))
            return
        if rules.HasField("min") and value < rules.min:
            found.append(
                FieldViolation(path, f"must be at least {_fmt(rules.min)}; got {_fmt(value)}")
            )
        if rules.HasField("max") and value > rules.max:
            found.append(
                FieldViolation(path, f"must be at most {_fmt(rules.max)}; got {_fmt(value)}")
            )


_TIME_TYPES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
_MAX_SECONDS = 315_576_000_000
"""10,000 years: the range protobuf allows for both types."""
_MIN_TIMESTAMP = -62_135_596_800
_MAX_TIMESTAMP = 253_402_300_799


def _time_problem(kind: str, value: Any) -> str:
    """Why a Timestamp or Duration is out of protobuf's documented range, or ""."""
    seconds, nanos = value.seconds, value.nanos
    if kind == "google.protobuf.Timestamp":
        if not 0 <= nanos <= 999_999_999:
            return "nanos must be between 0 and 999,999,999"
        if not _MIN_TIMESTAMP <= seconds <= _MAX_TIMESTAMP:
            return "must be between 0001-01-01 and 9999-12-31"
        return ""
    if not -999_999_999 <= nanos <= 999_999_999 or (seconds * nanos < 0):
        return "nanos must be within ±999,999,999 and have the sign of seconds"
    if not -_MAX_SECONDS <= seconds <= _MAX_SECONDS:
        return "must be within ±10,000 years"
    return ""


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)
