"""Request validation from the rules declared in the protos."""

from __future__ import annotations

import pytest

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb
from godel_grpc._proto.godel.v1 import task_service_pb2 as task_pb
from godel_grpc.api.validation import validate, violations
from godel_grpc.errors import InvalidArgument


def fields(message) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {v.field: v.description for v in violations(message)}


def test_a_valid_task_passes() -> None:
    request = task_pb.SubmitTaskRequest(role="backend", title="Implement API", priority="high")
    request.payload.update({"spec": "x"})
    validate(request)


def test_missing_target_names_the_oneof() -> None:
    assert fields(task_pb.SubmitTaskRequest(title="no target")) == {
        "target": "exactly one of role or action is required"
    }


def test_every_broken_rule_is_reported_with_its_path() -> None:
    request = task_pb.SubmitTasksRequest(
        requests=[
            task_pb.SubmitTaskRequest(role="ok"),
            task_pb.SubmitTaskRequest(role="bad role!", priority="urgent", max_attempts=101),
        ]
    )
    found = fields(request)
    assert set(found) == {"requests[1].role", "requests[1].priority", "requests[1].maxAttempts"}
    assert "one of 'low', 'normal', 'high', 'critical'" in found["requests[1].priority"]


def test_oversize_payload_is_refused() -> None:
    request = task_pb.SubmitTaskRequest(role="w")
    request.payload.update({"blob": "x" * (1024 * 1024 + 1)})
    assert "payload" in fields(request)


def test_empty_batch_and_too_large_batch() -> None:
    assert fields(task_pb.SubmitTasksRequest()) == {"requests": "is required"}
    big = task_pb.SubmitTasksRequest(requests=[task_pb.SubmitTaskRequest(role="w")] * 1001)
    assert "requests" in fields(big)


def test_unknown_enum_number_is_refused() -> None:
    assert fields(task_pb.ListTasksRequest(state=42)) == {"state": "unknown enum value 42"}  # type: ignore[arg-type]


def test_hello_rules() -> None:
    hello = link_pb.AgentHello(role="", capacity=-1, actions=[""])
    found = fields(hello)
    assert set(found) == {"role", "capacity", "actions[0]"}


def test_validate_raises_invalid_argument_with_bad_request_details() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate(task_pb.GetTaskRequest())
    status = raised.value.to_status()
    assert status.code == 3
    assert [d.TypeName() for d in status.details] == [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
    ]
