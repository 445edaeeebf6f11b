"""The API's surface: every RPC is classified for CQRS, DESIGN's contract is all there,
and servicers and client keep up with the generated stubs."""

from __future__ import annotations

import importlib
import pkgutil
import re

from godel_grpc._proto.godel import v1 as proto_package
from godel_grpc._proto.godel.v1 import options_pb2
from godel_grpc.api.agent_link import AgentLinkServicer
from godel_grpc.api.agents import AgentServicer
from godel_grpc.api.bulkheads import BulkheadServicer
from godel_grpc.api.convoys import ConvoyServicer
from godel_grpc.api.events import EventServicer
from godel_grpc.api.patterns import PatternServicer
from godel_grpc.api.queues import QueueServicer
from godel_grpc.api.sagas import SagaServicer
from godel_grpc.api.swarms import SwarmServicer
from godel_grpc.api.tasks import TaskServicer
from godel_grpc.api.workflows import WorkflowServicer
from godel_grpc.client import Events, Tasks

CONTRACT = {
    "AgentLinkService": {"Connect"},
    "AgentService": {
        "SpawnAgent",
        "GetAgent",
        "ListAgents",
        "TerminateAgent",
        "WatchAgents",
        "SubmitFeedback",
        "GetCircuitState",
        "ReplayAgent",
    },
    "EventService": {"ListAgentEvents", "SubscribeEvents"},
    "TaskService": {"SubmitTask", "SubmitTasks", "GetTask", "CancelTask", "WatchTask"},
    "ConvoyService": {"CreateConvoy", "StartConvoy", "GetConvoy", "CancelConvoy", "WatchConvoy"},
    "SwarmService": {"CreateSwarm", "SubmitSwarmTask", "GetSwarm", "DeleteSwarm"},
    "SagaService": {"CreateSaga", "ExecuteSaga", "CompensateSaga", "GetSaga", "WatchSaga"},
    "QueueService": {"CreateQueue", "Enqueue", "EnqueueStream", "GetQueue"},
    "BulkheadService": {"CreateBulkhead", "SubmitToPartition", "GetBulkhead"},
    "WorkflowService": {"CreateWorkflow", "StartWorkflow", "GetWorkflow", "WatchWorkflow"},
    "PatternService": {"GetPatternMetrics"},
    "LoggerSidecarService": {"Ship", "Tail"},
    "MonitorSidecarService": {"GetSample", "WatchSamples"},
}


def all_services():  # type: ignore[no-untyped-def]
    for info in pkgutil.iter_modules(proto_package.__path__):
        if info.name.endswith("_pb2") and not info.name.endswith("_grpc"):
            module = importlib.import_module(f"{proto_package.__name__}.{info.name}")
            yield from module.DESCRIPTOR.services_by_name.values()


def test_every_rpc_is_a_command_a_query_or_the_agent_link() -> None:
    unclassified = [
        method.full_name
        for service in all_services()
        for method in service.methods
        if method.GetOptions().Extensions[options_pb2.kind] == options_pb2.METHOD_KIND_UNSPECIFIED
    ]
    assert unclassified == []


AGENT_CALLS = {"Connect", "ReportAgentSample"}
"""RPCs an agent (or its sidecar) makes as itself, under its own credentials."""


def test_reads_are_queries_and_changes_are_commands() -> None:
    for service in all_services():
        for method in service.methods:
            kind = method.GetOptions().Extensions[options_pb2.kind]
            if re.match(r"(Get|List|Watch|Tail|Replay|Subscribe)", method.name):
                assert kind == options_pb2.METHOD_KIND_QUERY, method.full_name
            elif method.name in AGENT_CALLS:
                assert kind == options_pb2.METHOD_KIND_AGENT_LINK, method.full_name
            else:
                assert kind == options_pb2.METHOD_KIND_COMMAND, method.full_name


def test_the_design_contract_is_in_the_protos() -> None:
    found = {service.name: {m.name for m in service.methods} for service in all_services()}
    for service, rpcs in CONTRACT.items():
        assert service in found, service
        assert rpcs <= found[service], (service, rpcs - found[service])


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_implemented_servicers_override_every_rpc() -> None:
    for servicer, service in [
        (TaskServicer, "TaskService"),
        (EventServicer, "EventService"),
        (AgentLinkServicer, "AgentLinkService"),
        (SagaServicer, "SagaService"),
        (QueueServicer, "QueueService"),
        (BulkheadServicer, "BulkheadService"),
        (AgentServicer, "AgentService"),
        (ConvoyServicer, "ConvoyService"),
        (SwarmServicer, "SwarmService"),
        (WorkflowServicer, "WorkflowService"),
        (PatternServicer, "PatternService"),
    ]:
        rpcs = next(s for s in all_services() if s.name == service).methods
        missing = [m.name for m in rpcs if m.name not in vars(servicer)]
        assert missing == [], (service, missing)


def test_client_covers_task_service() -> None:
    expected = {
        "SubmitTask": "submit",
        "RunTask": "run",  # run goes over RunTaskStream; RunTask is the one-call form
        "RunTaskStream": "run",
        "SubmitTasks": "submit_many",
        "SubmitTaskStream": "submit_stream",
        "GetTask": "get",
        "ListTasks": "list",
        "CancelTask": "cancel",
        "WatchTask": "watch",
    }
    service = next(s for s in all_services() if s.name == "TaskService")
    assert {m.name for m in service.methods} == set(expected)
    for method in expected.values():
        assert callable(getattr(Tasks, method))
    assert callable(Events.get_for_agent) and callable(Events.subscribe)
