"""TLS and mTLS on a real coordinator, with certificates made here by `openssl`, and the
safe-defaults rule on a non-loopback address."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from godel_grpc._proto.godel.v1.agent_pb2 import Agent
from godel_grpc._proto.godel.v1.agent_service_pb2 import SpawnAgentRequest
from godel_grpc._proto.godel.v1.agent_service_pb2_grpc import AgentServiceStub
from godel_grpc.auth.channel import open_channel
from godel_grpc.client import Client
from godel_grpc.client._errors import RPCError
from tests.support import (
    PYTHON,
    ROOT,
    CoordinatorProcess,
    child_env,
    godel_token,
    grpcurl_json,
    require_tool,
    wait_for_agents,
)

pytestmark = pytest.mark.integration


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
        cwd=directory,
    )


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"),
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext"),
        *("-out", f"{name}.pem"),
        cwd=directory,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require_tool("openssl")
    directory = Path(tmp_path_factory.mktemp("pki"))
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _leaf(directory, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _leaf(directory, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return Certs(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


@pytest.fixture(scope="module")
def coordinator(
    certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoordinatorProcess]:
    """A coordinator that requires mTLS and tokens."""
    process = CoordinatorProcess(
        Path(tmp_path_factory.mktemp("tls")),
        *("--auth", "required", "--tls-cert", str(certs.server_cert)),
        *("--tls-key", str(certs.server_key), "--tls-client-ca", str(certs.ca)),
        *("--agent-tls-ca", str(certs.ca), "--agent-tls-cert", str(certs.client_cert)),
        *("--agent-tls-key", str(certs.client_key)),
    )
    try:
        yield process.start()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.terminate()  # SIGTERM: it stops the agents it spawned
        process.stop()


@pytest.fixture(scope="module")
def token(coordinator: CoordinatorProcess) -> str:
    return godel_token(coordinator.data_dir, "create", "--scopes", "read,write", "--name", "tls")


async def test_right_certificates_and_token_work(
    coordinator: CoordinatorProcess, certs: Certs, token: str
) -> None:
    """Given the right CA, client certificate and token, calls go through."""
    async with Client(
        coordinator.address,
        token=token,
        tls_ca=str(certs.ca),
        tls_cert=str(certs.client_cert),
        tls_key=str(certs.client_key),
        timeout=10,
    ) as client:
        assert await client.agents.list() == []


async def test_a_client_trusting_another_ca_is_refused(
    coordinator: CoordinatorProcess, certs: Certs, token: str
) -> None:
    """Given a client that trusts another CA, the handshake fails: UNAVAILABLE."""
    async with Client(
        coordinator.address,
        token=token,
        tls_ca=str(certs.other_ca),
        tls_cert=str(certs.client_cert),
        tls_key=str(certs.client_key),
        timeout=3,
    ) as client:
        with pytest.raises(RPCError) as refused:
            await client.agents.list()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_without_client_certificate_is_refused(
    coordinator: CoordinatorProcess, certs: Certs, token: str
) -> None:
    """Given the right CA but no client certificate, the server ends the handshake."""
    async with Client(coordinator.address, token=token, tls_ca=str(certs.ca), timeout=3) as client:
        with pytest.raises(RPCError) as refused:
            await client.agents.list()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_is_refused(coordinator: CoordinatorProcess, token: str) -> None:
    async with Client(coordinator.address, token=token, timeout=3) as client:
        with pytest.raises(RPCError) as refused:
            await client.agents.list()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_grpcurl_with_the_right_certificates(
    coordinator: CoordinatorProcess, certs: Certs, token: str
) -> None:
    """Given grpcurl with the CA, client certificate and token, a task is submitted."""
    submitted = await grpcurl_json(
        coordinator.address,
        "godel.v1.TaskService/SubmitTask",
        '{"role": "worker", "title": "over mTLS"}',
        *("-cacert", str(certs.ca), "-cert", str(certs.client_cert)),
        *("-key", str(certs.client_key), "-H", f"authorization: Bearer {token}"),
    )
    assert submitted["task"]["title"] == "over mTLS"


def test_a_public_address_needs_tls_and_tokens(tmp_path: Path) -> None:
    """Given no TLS, listening on every interface is refused unless --insecure."""
    refused = subprocess.run(
        [
            *(PYTHON, "-m", "godel_grpc.cli", "serve", "--listen", "0.0.0.0:0"),
            *("--metrics-listen", "", "--data-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr and "TLS" in refused.stderr


async def test_spawned_agents_connect_over_mtls_with_their_token(
    coordinator: CoordinatorProcess, certs: Certs, token: str
) -> None:
    """Given a coordinator with mTLS and tokens, an agent it spawns connects: it gets
    the CA and client certificate from --agent-tls-*, and a token of its own."""
    tls = {
        "tls_ca": str(certs.ca),
        "tls_cert": str(certs.client_cert),
        "tls_key": str(certs.client_key),
    }
    async with open_channel(coordinator.address, token=token, **tls) as channel:
        spawned = await AgentServiceStub(channel).SpawnAgent(
            SpawnAgentRequest(role="tls-worker"), timeout=30
        )
    async with Client(coordinator.address, token=token, timeout=10, **tls) as client:
        await wait_for_agents(client, 1, role="tls-worker")
        assert (await client.agents.get(spawned.agent.id)).state == Agent.STATE_READY
