"""Random well-typed requests and random bytes against every RPC of a real coordinator.

Whatever arrives, a caller gets a meaningful status (never UNKNOWN or INTERNAL) and the
server stays healthy for everyone else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from godel_grpc.server import api_services
from tests.support import CoordinatorProcess

pytestmark = pytest.mark.integration

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
TEXT = st.one_of(
    st.sampled_from(["", "worker", "t-1-1", "low", "critical", "shed-load", "-", "a" * 300]),
    st.text(max_size=20),
)


def _methods() -> list[MethodDescriptor]:
    return [method for service, _, _ in api_services() for method in service.methods]


METHODS = _methods()


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[object]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.integers(-(2**31), 2**31 - 1)
    return st.integers(-(2**63), 2**63 - 1)


def _message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(
            TEXT, st.one_of(TEXT, st.integers(-1000, 1000), st.booleans()), max_size=3
        ).map(_struct)
    if descriptor.full_name == "google.protobuf.Value" or depth > 3:
        return st.just(cls())
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                continue
            fields[field.name] = st.dictionaries(TEXT, _value(value_field, depth), max_size=3)
        elif field.is_repeated:
            fields[field.name] = st.lists(_value(field, depth), max_size=3)
        else:
            fields[field.name] = _value(field, depth)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _struct(values: dict[str, object]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _build(cls: type[Message], values: dict[str, object]) -> Message:
    message = cls()
    for name, value in values.items():
        target = getattr(message, name)
        if isinstance(value, Message):
            target.CopyFrom(value)
        elif isinstance(value, dict):
            target.update(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], Message):
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        else:
            with contextlib.suppress(ValueError):  # e.g. a float out of float32 range
                setattr(message, name, value)
    return message


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    process = CoordinatorProcess(Path(tmp_path_factory.mktemp("fuzz")))
    process.start()
    try:
        with grpc.insecure_channel(process.address) as opened:
            yield opened
    finally:
        process.stop()


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)
            responses = call(iter([payload, payload]), timeout=1.0)
            for _ in responses:
                break
            responses.cancel()
        elif method.server_streaming:
            responses = channel.unary_stream(path)(payload, timeout=1.0)
            for _ in responses:
                break
            responses.cancel()
        else:
            channel.unary_unary(path)(payload, timeout=2.0)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _assert_healthy(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_well_typed_requests(channel: grpc.Channel, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS), label="method")
    request = data.draw(_message(method.input_type), label="request")
    code = _call(channel, method, request.SerializeToString())
    assert code not in FORBIDDEN, f"{method.full_name} answered {code.name} to {request}"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(METHODS), payload=st.binary(min_size=1, max_size=64))
def test_random_bytes(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> None:
    code = _call(channel, method, payload)
    assert code not in FORBIDDEN, f"{method.full_name} answered {code.name} to {payload!r}"


def test_server_is_still_healthy_after_the_fuzzing(channel: grpc.Channel) -> None:
    _assert_healthy(channel)
