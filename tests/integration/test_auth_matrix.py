"""Every RPC of the API, against a real coordinator with `--auth required`, with no
token, a revoked token, a token lacking the RPC's scope, and the right token.

The RPCs come from the descriptors, so an RPC added to the protos is walked too, and
one added without its `(godel.v1.kind)` option fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from godel_grpc._proto.godel.v1 import agent_link_service_pb2 as link_pb2
from godel_grpc._proto.godel.v1 import options_pb2
from godel_grpc.auth.scopes import KIND_AGENT_LINK, KIND_COMMAND, KIND_QUERY
from godel_grpc.client import Client
from godel_grpc.client._errors import RPCError
from godel_grpc.server import api_services
from tests.support import CoordinatorProcess, godel_token, wait_for_agents

pytestmark = pytest.mark.integration

DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
METHODS = [method for service, _, _ in api_services() for method in service.methods]


def _kind(method: MethodDescriptor) -> int:
    return int(method.GetOptions().Extensions[options_pb2.kind])


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    process = CoordinatorProcess(
        Path(tmp_path_factory.mktemp("matrix")), "--auth", "required", "--rate-limit", "0"
    )
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tokens(coordinator: CoordinatorProcess) -> dict[str, str]:
    """Tokens made with `godel token create` while the coordinator runs."""
    data = coordinator.data_dir
    made = {
        name: godel_token(data, "create", "--scopes", scopes, "--name", name)
        for name, scopes in [
            ("admin", "admin"),
            ("reader", "read"),
            ("writer", "write"),
            ("reader-writer", "read,write"),
            ("agent-only", "agent,read"),
            ("doomed", "admin"),
        ]
    }
    made["agent-only-write"] = godel_token(
        data, "create", "--scopes", "agent,write", "--name", "matrix-agent-w", "--agent", "m-w"
    )
    return made


def test_every_rpc_declares_its_kind() -> None:
    """Given the protos, every RPC carries a command, query or agent-link kind."""
    missing = [method.full_name for method in METHODS if _kind(method) == 0]
    assert not missing, f"RPCs without (godel.v1.kind): {missing}"
    assert len(METHODS) > 40


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, token: str, send: bool = True
) -> grpc.StatusCode:
    """Calls `method` with an empty request (and `token`); the status it ends with.
    `send=False` writes nothing on a client stream."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = GetMessageClass(method.input_type)()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    serialize = type(request).SerializeToString
    if method.client_streaming:
        make = channel.stream_stream if method.server_streaming else channel.stream_unary
        call = make(path, request_serializer=serialize)(metadata=metadata, timeout=2.0)
        if send:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(request)
                await call.done_writing()
        # Without `send`, nothing is written: a server that refuses the call answers at
        # once, one that accepted it would wait for messages until the deadline. (A
        # write racing a refusal would make grpc report its own INTERNAL instead.)
        return await call.code()
    try:
        if method.server_streaming:
            async for _ in channel.unary_stream(path, request_serializer=serialize)(
                request, metadata=metadata, timeout=2.0
            ):
                pass
        else:
            await channel.unary_unary(path, request_serializer=serialize)(
                request, metadata=metadata, timeout=2.0
            )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_auth_matrix(coordinator: CoordinatorProcess, tokens: dict[str, str]) -> None:
    """Given every RPC, when it is called without a token, with a revoked token, with a
    token lacking its scope and with the right one, then no call without the right
    scope gets past authorization, and every call with it does."""
    lacking = {
        KIND_COMMAND: tokens["agent-only"],  # agent + read, no write
        KIND_QUERY: tokens["agent-only-write"],  # agent + write, no read
        KIND_AGENT_LINK: tokens["reader-writer"],  # read + write, no agent
    }
    right = {
        KIND_COMMAND: tokens["writer"],
        KIND_QUERY: tokens["reader"],
        KIND_AGENT_LINK: tokens["agent-only"],
    }
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        # The doomed token works, then `godel token revoke` cuts it off with the
        # coordinator still running.
        assert await _call(channel, _method("ListAgents"), tokens["doomed"]) not in DENIED
        godel_token(coordinator.data_dir, "revoke", "doomed")

        cases: list[tuple[MethodDescriptor, str, str, grpc.StatusCode | None]] = []
        for method in METHODS:
            kind = _kind(method)
            cases += [
                (method, "none", "", grpc.StatusCode.UNAUTHENTICATED),
                (method, "revoked", tokens["doomed"], grpc.StatusCode.UNAUTHENTICATED),
                (method, "lacking", lacking[kind], grpc.StatusCode.PERMISSION_DENIED),
                (method, "right", right[kind], None),
                (method, "admin", tokens["admin"], None),
            ]
        # All at once: the calls that get past auth on a Watch RPC run to the deadline.
        codes = await asyncio.gather(
            *(_call(channel, m, token, send=expected is None) for m, _, token, expected in cases)
        )
    accepted_without_scope: list[str] = []
    refused_with_scope: list[str] = []
    counts = dict.fromkeys(["none", "revoked", "lacking", "right", "admin"], 0)
    for (method, case, _, expected), code in zip(cases, codes, strict=True):
        if expected is None:
            if code in DENIED:
                refused_with_scope.append(f"{method.full_name} ({case}: {code.name})")
            else:
                counts[case] += 1
        elif code not in DENIED:
            accepted_without_scope.append(f"{method.full_name} ({case}: {code.name})")
        else:
            assert code == expected, (method.full_name, case, code)
            counts[case] += 1
    print(f"\nauth matrix over {len(METHODS)} RPCs: {counts}")
    assert accepted_without_scope == [], accepted_without_scope
    assert refused_with_scope == [], refused_with_scope


def _method(name: str) -> MethodDescriptor:
    return next(method for method in METHODS if method.name == name)


async def test_refusals_say_why(coordinator: CoordinatorProcess, tokens: dict[str, str]) -> None:
    """Given a read-only token, when it submits a task, then the refusal names the
    scope it lacks; without a token, the refusal says a token is missing."""
    async with Client(coordinator.address, token=tokens["reader"]) as reader:
        with pytest.raises(RPCError) as denied:
            await reader.tasks.submit(role="worker", payload={})
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.reason == "SCOPE_MISSING"
    assert "'write'" in denied.value.message
    async with Client(coordinator.address) as anonymous:
        with pytest.raises(RPCError) as missing:
            await anonymous.agents.list()
    assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert missing.value.reason == "TOKEN_MISSING"


async def test_a_shared_run_stream_carries_the_token(
    coordinator: CoordinatorProcess, tokens: dict[str, str]
) -> None:
    """client.tasks.run goes over one RunTaskStream: a write token runs (its task waits
    for an agent until the run's wait ends), a read token is refused with the scope."""
    async with Client(coordinator.address, token=tokens["writer"]) as writer:
        with pytest.raises(RPCError) as waited:
            await writer.tasks.run(role="nobody-here", wait_timeout=0.2)
    assert waited.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "carries on" in waited.value.message
    async with Client(coordinator.address, token=tokens["reader"]) as reader:
        with pytest.raises(RPCError) as denied:
            await reader.tasks.run(role="nobody-here", wait_timeout=5)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.reason == "SCOPE_MISSING"


async def test_an_agent_opens_only_its_own_link(
    coordinator: CoordinatorProcess, tokens: dict[str, str]
) -> None:
    """Given an agent token bound to `matrix-agent-w`'s name `m-w`, when an agent says
    hello as another name, then it is refused; as its own name, it connects."""
    stub_token = tokens["agent-only-write"]
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        connect = channel.stream_stream(
            "/godel.v1.AgentLinkService/Connect",
            request_serializer=link_pb2.AgentMessage.SerializeToString,
            response_deserializer=link_pb2.CoordinatorMessage.FromString,
        )
        metadata = (("authorization", f"Bearer {stub_token}"),)
        impostor = connect(metadata=metadata, timeout=10)
        await impostor.write(
            link_pb2.AgentMessage(hello=link_pb2.AgentHello(name="someone-else", role="worker"))
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await impostor.read()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        own = connect(metadata=metadata, timeout=10)
        await own.write(link_pb2.AgentMessage(hello=link_pb2.AgentHello(name="m-w", role="w")))
        first = await own.read()
        assert isinstance(first, link_pb2.CoordinatorMessage) and first.HasField("welcome")
        async with Client(coordinator.address, token=tokens["reader"]) as reader:
            await wait_for_agents(reader, 1, role="w")
        own.cancel()
