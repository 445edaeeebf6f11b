"""`godel serve` flags for authentication and TLS, and the config they make.

What they mean together (the safe-defaults rule) is decided in
`godel_grpc.auth.transport.decide`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from godel_grpc.auth.transport import AUTH_MODES


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """How the coordinator's port is protected."""

    auth: str = "auto"
    """``required``: every call needs a token; ``off``: none does; ``auto``: required
    except on a loopback address."""
    tls_cert: str = ""
    """PEM certificate chain of the server; with `tls_key`, the port speaks TLS."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """PEM CA bundle; when given, clients must present a certificate it signed (mTLS)."""
    insecure: bool = False
    """Serve a non-loopback address without TLS or tokens anyway."""
    agent_tls_ca: str = ""
    """For agents this coordinator spawns, when it speaks TLS: the CA that signed its
    certificate (which must name 127.0.0.1, where they connect)."""
    agent_tls_cert: str = ""
    """Client certificate spawned agents present when the coordinator requires mTLS."""
    agent_tls_key: str = ""

    def agent_env(self) -> dict[str, str]:
        """The environment that lets a spawned agent connect over TLS."""
        values = {
            "GODEL_TLS_CA": self.agent_tls_ca,
            "GODEL_TLS_CERT": self.agent_tls_cert,
            "GODEL_TLS_KEY": self.agent_tls_key,
        }
        return {name: value for name, value in values.items() if value}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SecurityConfig:
        """The config from parsed `godel serve` arguments."""
        return cls(
            auth=args.auth,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            insecure=args.insecure,
            agent_tls_ca=args.agent_tls_ca,
            agent_tls_cert=args.agent_tls_cert,
            agent_tls_key=args.agent_tls_key,
        )


def add_security_arguments(
    parser: argparse.ArgumentParser, env_default: Callable[[str, str], str]
) -> None:
    """Adds the authentication and TLS flags of `godel serve`."""
    d = SecurityConfig()
    parser.add_argument(
        "--auth",
        default=env_default("AUTH", d.auth),
        choices=AUTH_MODES,
        help="bearer tokens (`godel token create`): required, off, or auto (required "
        "unless listening on loopback)",
    )
    parser.add_argument(
        "--tls-cert", default=env_default("TLS_CERT", d.tls_cert), help="PEM server certificate"
    )
    parser.add_argument(
        "--tls-key", default=env_default("TLS_KEY", d.tls_key), help="PEM server private key"
    )
    parser.add_argument(
        "--tls-client-ca",
        default=env_default("TLS_CLIENT_CA", d.tls_client_ca),
        help="PEM CA of client certificates; given, clients must present one (mTLS)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=env_default("INSECURE", "") in ("1", "true", "yes"),
        help="allow a non-loopback address without TLS or without tokens",
    )
    for flag, what in [
        ("--agent-tls-ca", "CA of this coordinator's certificate, for the agents it spawns"),
        ("--agent-tls-cert", "client certificate for the agents it spawns (mTLS)"),
        ("--agent-tls-key", "key of --agent-tls-cert"),
    ]:
        var = flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, default=env_default(var, ""), metavar="PEM", help=what)
