"""Every JSON object of the seed (seed/advanced-patterns.md) is a valid request as is.

Users paste the seed's objects into `grpcurl -d`, so each one must parse with the proto3
JSON mapping into its request message, with unknown fields rejected (the default), and
must pass the declarative validation rules of the protos. The JSON below is the seed's
TypeScript object literals translated key for key and value for value; the saga's step
functions become the action names they call.
"""

from __future__ import annotations

from typing import TypeVar

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from godel_grpc._proto.godel.v1 import (
    agent_service_pb2,
    bulkhead_service_pb2,
    convoy_service_pb2,
    queue_service_pb2,
    saga_service_pb2,
    swarm_service_pb2,
    workflow_service_pb2,
)
from godel_grpc.api.validation import violations

M = TypeVar("M", bound=Message)


def _parse(text: str, message: M) -> M:
    """Given seed JSON, when parsed strictly, then it breaks no validation rule."""
    json_format.Parse(text, message)
    assert violations(message) == []
    return message


def test_convoy_seed_parses_into_create_convoy_request() -> None:
    text = """
    {
      "name": "feature-implementation",
      "pattern": "convoy",
      "agents": [
        {"role": "architect", "task": "Design system architecture"},
        {"role": "backend", "task": "Implement API endpoints", "dependsOn": ["architect"]},
        {"role": "frontend", "task": "Build UI components", "dependsOn": ["architect"]},
        {"role": "tester", "task": "Write tests", "dependsOn": ["backend", "frontend"]},
        {"role": "reviewer", "task": "Final review", "dependsOn": ["tester"]}
      ]
    }
    """
    request = _parse(text, convoy_service_pb2.CreateConvoyRequest())

    assert request.name == "feature-implementation"
    assert request.pattern == "convoy"
    assert len(request.agents) == 5
    tester = request.agents[3]
    assert tester.role == "tester"
    assert tester.task == "Write tests"
    assert list(tester.depends_on) == ["backend", "frontend"]
    assert list(request.agents[0].depends_on) == []


def test_reflex_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "reflex": {
        "enabled": true,
        "memory": "persistent",
        "feedbackLoop": true,
        "adaptationRate": 0.1
      }
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    assert request.role == "worker"
    assert request.reflex.enabled
    assert request.reflex.memory == "persistent"
    assert request.reflex.feedback_loop
    assert request.reflex.adaptation_rate == pytest.approx(0.1)


def test_feedback_seed_parses_into_submit_feedback_request() -> None:
    text = """
    {
      "taskId": "task-001",
      "rating": 4.5,
      "comments": "Good but missed edge case with null input"
    }
    """
    request = agent_service_pb2.SubmitFeedbackRequest()
    json_format.Parse(text, request)
    request.agent_id = "agent-1"  # the seed passes reflex.id beside the object

    assert violations(request) == []
    assert request.task_id == "task-001"
    assert request.rating == 4.5
    assert request.comments == "Good but missed edge case with null input"


def test_swarm_seed_parses_into_create_swarm_request() -> None:
    text = """
    {
      "name": "processing-swarm",
      "minAgents": 2,
      "maxAgents": 20,
      "scalePolicy": {
        "metric": "queue_depth",
        "target": 10,
        "scaleUpThreshold": 0.8,
        "scaleDownThreshold": 0.3
      }
    }
    """
    request = _parse(text, swarm_service_pb2.CreateSwarmRequest())

    assert request.name == "processing-swarm"
    assert (request.min_agents, request.max_agents) == (2, 20)
    assert request.scale_policy.metric == "queue_depth"
    assert request.scale_policy.target == 10
    assert request.scale_policy.scale_up_threshold == pytest.approx(0.8)
    assert request.scale_policy.scale_down_threshold == pytest.approx(0.3)


def test_swarm_task_in_the_seed_shape_parses_into_submit_swarm_task_request() -> None:
    # `swarm.submit(task)`: the swarm's id beside the task's own fields.
    text = """
    {"swarmId": "sw-1-1", "title": "Process record 42", "priority": "high"}
    """
    request = _parse(text, swarm_service_pb2.SubmitSwarmTaskRequest())

    assert request.swarm_id == "sw-1-1"
    assert request.title == "Process record 42"
    assert request.priority == "high"


def test_swarm_with_the_options_beyond_the_seed_parses() -> None:
    text = """
    {
      "name": "processing-swarm",
      "minAgents": 2,
      "maxAgents": 20,
      "scalePolicy": {
        "metric": "queue_depth",
        "target": 10,
        "scaleUpThreshold": 0.8,
        "scaleDownThreshold": 0.3,
        "cooldown": 30,
        "scaleUpStabilizationWindow": 0,
        "scaleDownStabilizationWindow": 120,
        "maxScaleUpAgents": 4,
        "maxScaleDownAgents": 2,
        "scalePeriod": 60
      },
      "agentTemplate": {"role": "processor", "exec": "claude -p", "capacity": 2}
    }
    """
    request = _parse(text, swarm_service_pb2.CreateSwarmRequest())

    assert request.scale_policy.scale_down_stabilization_window == 120
    assert request.scale_policy.max_scale_up_agents == 4
    assert request.agent_template.exec == "claude -p"


def test_circuit_breaker_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "circuitBreaker": {
        "enabled": true,
        "failureThreshold": 5,
        "timeout": 30,
        "halfOpenRequests": 3
      }
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    assert request.circuit_breaker.enabled
    assert request.circuit_breaker.failure_threshold == 5
    assert request.circuit_breaker.timeout == 30
    assert request.circuit_breaker.half_open_requests == 3


def test_saga_seed_parses_into_create_saga_request() -> None:
    text = """
    {
      "name": "user-onboarding",
      "steps": [
        {"name": "create-user", "action": "createUser", "compensate": "deleteUser"},
        {"name": "send-welcome-email", "action": "sendEmail", "compensate": "markEmailFailed"},
        {"name": "create-trial", "action": "createTrial", "compensate": "cancelTrial"}
      ]
    }
    """
    request = _parse(text, saga_service_pb2.CreateSagaRequest())

    assert request.name == "user-onboarding"
    assert [step.name for step in request.steps] == [
        "create-user",
        "send-welcome-email",
        "create-trial",
    ]
    assert request.steps[0].action == "createUser"
    assert request.steps[0].compensate == "deleteUser"
    assert request.steps[2].compensate == "cancelTrial"


def test_event_sourcing_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "eventSourcing": {
        "enabled": true,
        "snapshotInterval": 100
      }
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    assert request.event_sourcing.enabled
    assert request.event_sourcing.snapshot_interval == 100


def test_cqrs_command_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "purpose": "command",
      "models": {
        "write": true,
        "read": false
      }
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    assert request.purpose == "command"
    assert request.models.write
    assert not request.models.read


def test_cqrs_query_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "purpose": "query",
      "models": {
        "write": false,
        "read": true
      }
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    assert request.purpose == "query"
    assert not request.models.write
    assert request.models.read


def test_backpressure_seed_parses_into_create_queue_request() -> None:
    text = """
    {
      "name": "high-volume-queue",
      "backpressure": {
        "strategy": "shed-load",
        "maxSize": 10000,
        "highWatermark": 0.8,
        "lowWatermark": 0.3
      }
    }
    """
    request = _parse(text, queue_service_pb2.CreateQueueRequest())

    assert request.name == "high-volume-queue"
    assert request.backpressure.strategy == "shed-load"
    assert request.backpressure.max_size == 10000
    assert request.backpressure.high_watermark == pytest.approx(0.8)
    assert request.backpressure.low_watermark == pytest.approx(0.3)


def test_bulkhead_seed_parses_into_create_bulkhead_request() -> None:
    text = """
    {
      "name": "service-isolation",
      "partitions": [
        {"name": "auth", "maxAgents": 5, "maxTasks": 20},
        {"name": "billing", "maxAgents": 5, "maxTasks": 20},
        {"name": "analytics", "maxAgents": 3, "maxTasks": 10}
      ]
    }
    """
    request = _parse(text, bulkhead_service_pb2.CreateBulkheadRequest())

    assert [p.name for p in request.partitions] == ["auth", "billing", "analytics"]
    analytics = request.partitions[2]
    assert (analytics.max_agents, analytics.max_tasks) == (3, 10)


def test_sidecar_seed_parses_into_spawn_agent_request() -> None:
    text = """
    {
      "role": "worker",
      "sidecars": [
        {
          "name": "logger",
          "image": "godel/sidecar-logger:latest",
          "config": {"level": "debug"}
        },
        {
          "name": "monitor",
          "image": "godel/sidecar-monitor:latest",
          "config": {"metrics": ["cpu", "memory"]}
        }
      ]
    }
    """
    request = _parse(text, agent_service_pb2.SpawnAgentRequest())

    logger, monitor = request.sidecars
    assert logger.name == "logger"
    assert logger.image == "godel/sidecar-logger:latest"
    assert logger.config["level"] == "debug"
    assert monitor.name == "monitor"
    assert list(monitor.config["metrics"]) == ["cpu", "memory"]


def test_combined_workflow_seed_parses_into_create_workflow_request() -> None:
    text = """
    {
      "name": "enterprise-feature",
      "patterns": {
        "coordination": "convoy",
        "transaction": "saga",
        "resilience": "circuit-breaker",
        "isolation": "bulkhead"
      },
      "stages": [
        {"name": "design", "pattern": "convoy", "agents": 2},
        {"name": "implement", "pattern": "swarm", "minAgents": 3, "maxAgents": 10},
        {"name": "verify", "pattern": "saga", "agents": 2}
      ]
    }
    """
    request = _parse(text, workflow_service_pb2.CreateWorkflowRequest())

    assert request.patterns.coordination == "convoy"
    assert request.patterns.transaction == "saga"
    assert request.patterns.resilience == "circuit-breaker"
    assert request.patterns.isolation == "bulkhead"
    assert [s.pattern for s in request.stages] == ["convoy", "swarm", "saga"]
    assert request.stages[0].agents == 2
    implement = request.stages[1]
    assert (implement.min_agents, implement.max_agents) == (3, 10)


def test_misspelled_key_is_rejected() -> None:
    text = """
    {
      "role": "worker",
      "circuitBreaker": {"enabled": true, "failureTreshold": 5}
    }
    """
    with pytest.raises(json_format.ParseError, match="failureTreshold"):
        json_format.Parse(text, agent_service_pb2.SpawnAgentRequest())
