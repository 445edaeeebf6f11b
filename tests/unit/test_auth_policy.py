"""Authorization policy without a server: scopes, spawn credentials, rate limits, the
safe-defaults rule, the token file, and the fail-closed method table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from godel_grpc.api.auth import Authorizer, method_kinds
from godel_grpc.auth.ratelimit import RateLimiter
from godel_grpc.auth.scopes import (
    KIND_AGENT_LINK,
    KIND_COMMAND,
    KIND_QUERY,
    Principal,
    parse_scopes,
    spawn_scopes,
)
from godel_grpc.auth.tokens import TokenFile, hash_token
from godel_grpc.auth.transport import UnsafeConfig, decide, is_loopback
from godel_grpc.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from godel_grpc.limits import LimitsConfig
from godel_grpc.server import api_services

SUBMIT = "/godel.v1.TaskService/SubmitTask"
GET = "/godel.v1.TaskService/GetTask"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def authorizer(tmp_path: Path, rate: float = 0.0, burst: float = 1.0) -> Authorizer:
    kinds = method_kinds(service for service, _, _ in api_services())
    return Authorizer(kinds, TokenFile(tmp_path), RateLimiter(rate, burst), clock=lambda: 0.0)


def test_seed_cqrs_agents_get_only_their_side() -> None:
    """Given the seed's command and query agents, their credentials hold write or read."""
    assert spawn_scopes("command", (True, False)) == (frozenset({"agent", "write"}), None)
    assert spawn_scopes("query", (False, True)) == (frozenset({"agent", "read"}), None)
    assert spawn_scopes("", None) == (frozenset({"agent", "read", "write"}), None)
    assert spawn_scopes("query", None)[0] == frozenset({"agent", "read"})
    assert spawn_scopes("query", (True, True))[1] is not None


def test_token_file_stores_only_hashes_and_revocation_is_seen_at_once(tmp_path: Path) -> None:
    """Given a token, the file holds its hash, not the token; revoking it through
    another TokenFile on the same directory (the CLI) is seen on the next lookup."""
    server_view = TokenFile(tmp_path)
    _record, token = TokenFile(tmp_path).create(parse_scopes("read,write"), name="ci")
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text and hash_token(token) in text
    assert json.loads(text)["tokens"][0]["name"] == "ci"
    principal = server_view.principal_for(token)
    assert principal is not None and principal.scopes == {"read", "write"}
    TokenFile(tmp_path).revoke("ci")
    assert server_view.principal_for(token) is None
    assert server_view.principal_for("gdl_guess") is None
    with pytest.raises(ValueError):
        TokenFile(tmp_path).create(parse_scopes("agent"), name="unbound")


def test_spawned_agents_revoked_tokens_are_dropped_after_a_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given spawned agents' tokens revoked two days and one hour ago, an operator's
    token revoked two days ago and a live spawned token, when the next spawned agent's
    token is minted, then only the spawned token revoked two days ago is gone."""
    day = 24 * 3600.0
    now = [1_000_000.0]
    monkeypatch.setattr("godel_grpc.auth.tokens.time.time", lambda: now[0])
    tokens = TokenFile(tmp_path)
    for name in ("agent/old", "agent/recent", "agent/live"):
        tokens.create(frozenset({"agent"}), name=name, agent=name, spawned=True)
    tokens.create(frozenset({"read"}), name="operator")
    now[0] += 1.0
    tokens.revoke("agent/old")
    tokens.revoke("operator")
    now[0] += 2 * day - 3600.0
    tokens.revoke("agent/recent")
    now[0] += 3600.0

    tokens.create(frozenset({"agent"}), name="agent/new", agent="agent/new", spawned=True)

    assert [(r.name, r.revoked is not None) for r in tokens.records()] == [
        ("agent/recent", True),
        ("agent/live", False),
        ("operator", True),
        ("agent/new", False),
    ]


def test_a_broken_token_file_accepts_no_token(tmp_path: Path) -> None:
    """Given a token file broken by hand, no token is accepted (and nothing crashes)."""
    store = TokenFile(tmp_path)
    _, token = store.create(frozenset({"admin"}), name="root")
    assert store.principal_for(token) is not None
    (tmp_path / "tokens.json").write_text("{not json")
    assert store.principal_for(token) is None


def test_no_token_unknown_token_and_missing_scope(tmp_path: Path) -> None:
    """Given tokens in the file, the authorizer tells the three refusals apart."""
    auth = authorizer(tmp_path)
    _, reader = TokenFile(tmp_path).create(frozenset({"read"}), name="r")
    with pytest.raises(Unauthenticated):
        auth.admit(GET, [])
    with pytest.raises(Unauthenticated):
        auth.admit(GET, [("authorization", "Basic abc")])
    with pytest.raises(Unauthenticated):
        auth.admit(GET, bearer("gdl_unknown"))
    assert auth.admit(GET, bearer(reader)).name == "r"
    with pytest.raises(PermissionDenied) as denied:
        auth.admit(SUBMIT, bearer(reader))
    assert denied.value.metadata["required_scope"] == "write"


def test_a_method_without_kind_is_refused_even_to_admin(tmp_path: Path) -> None:
    """Given an RPC the kind table does not know (or knows without a kind), then no
    principal may call it: authorization fails closed."""
    _, admin = TokenFile(tmp_path).create(frozenset({"admin"}), name="root")
    auth = Authorizer({"/godel.v1.X/NoKind": 0}, TokenFile(tmp_path), RateLimiter(0, 1))
    for method in ("/godel.v1.X/NoKind", "/godel.v1.X/Unknown"):
        with pytest.raises(PermissionDenied) as denied:
            auth.admit(method, bearer(admin))
        assert denied.value.reason == "METHOD_KIND_MISSING"


def test_rate_limit_refuses_with_retry_after(tmp_path: Path) -> None:
    """Given a burst of 3 at 1 request/s, the fourth call at once is refused with the
    time until the next token."""
    auth = authorizer(tmp_path, rate=1.0, burst=3)
    _, token = TokenFile(tmp_path).create(frozenset({"read"}), name="r")
    for _ in range(3):
        auth.admit(GET, bearer(token))
    with pytest.raises(ResourceExhausted) as limited:
        auth.admit(GET, bearer(token))
    assert limited.value.retry_after == pytest.approx(1.0)


def test_the_default_rate_lets_one_caller_keep_the_server_busy() -> None:
    """With the default limits, one principal (with authentication off, every caller)
    may start 2,500 requests a second for four seconds, the one-task-per-call rate the
    bench aims at, without a refusal; twice the server's unary rate is refused."""
    defaults = LimitsConfig()
    limiter = RateLimiter(defaults.rate_limit, defaults.rate_burst)
    refused = sum(limiter.take("local", i / 2_500) > 0 for i in range(10_000))
    assert refused == 0
    flood = RateLimiter(defaults.rate_limit, defaults.rate_burst)
    refused = sum(flood.take("local", i / 10_000) > 0 for i in range(60_000))
    assert refused >= 19_000  # 60,000 asked, at most 10,000 + 6 s x 5,000 admitted


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_token_bucket_never_admits_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Whatever the arrival times, admitted calls <= burst + rate * elapsed."""
    limiter = RateLimiter(rate, burst)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        if limiter.take("p", now) == 0.0:
            admitted += 1
    assert admitted <= burst + rate * now + 1e-6


def test_agent_principals_act_only_as_themselves() -> None:
    agent = Principal("t", "t", frozenset({"agent"}), agent="a1")
    assert agent.may_act_as("a1") and not agent.may_act_as("a2")
    assert not Principal("t", "t", frozenset({"agent"})).may_act_as("")
    assert Principal("t", "t", frozenset({"admin"})).may_act_as("anyone")


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:0", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("10.0.0.5:1", False),
        (":50051", False),
        ("example.com:1", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_safe_defaults() -> None:
    """Loopback runs open by default; any other address needs TLS and tokens unless
    --insecure says otherwise."""
    open_local = decide(
        "127.0.0.1:0", "auto", tls_cert="", tls_key="", tls_client_ca="", insecure=False
    )
    assert not open_local.auth_required
    with pytest.raises(UnsafeConfig, match="TLS"):
        decide("0.0.0.0:1", "auto", tls_cert="", tls_key="", tls_client_ca="", insecure=False)
    with pytest.raises(UnsafeConfig, match="tokens"):
        decide("0.0.0.0:1", "off", tls_cert="c", tls_key="k", tls_client_ca="", insecure=False)
    remote = decide(
        "0.0.0.0:1", "auto", tls_cert="c", tls_key="k", tls_client_ca="ca", insecure=False
    )
    assert remote.auth_required and remote.mutual_tls
    assert not decide(
        "0.0.0.0:1", "off", tls_cert="", tls_key="", tls_client_ca="", insecure=True
    ).auth_required


def test_kinds_map_to_scopes(tmp_path: Path) -> None:
    kinds = method_kinds(service for service, _, _ in api_services())
    assert kinds[SUBMIT] == KIND_COMMAND
    assert kinds[GET] == KIND_QUERY
    assert kinds["/godel.v1.AgentLinkService/Connect"] == KIND_AGENT_LINK
