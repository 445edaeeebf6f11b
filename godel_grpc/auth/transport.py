"""How the coordinator's port is protected: TLS, mTLS, and the safe-defaults rule.

The rule: on a loopback address the coordinator may run without authentication and
without TLS, for local use, and says so in its log; on any other address it refuses to
start unless it has TLS and requires tokens, or `--insecure` says that is intended.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTH_MODES = ("auto", "required", "off")


class UnsafeConfig(Exception):
    """The coordinator would expose an unprotected port; it does not start."""


@dataclass(frozen=True, slots=True)
class Protection:
    """What the server enforces, decided once at start."""

    auth_required: bool
    tls: bool
    mutual_tls: bool
    loopback: bool

    def describe(self) -> str:
        """One line for the log."""
        auth = "tokens required" if self.auth_required else "authentication OFF"
        tls = "mTLS" if self.mutual_tls else "TLS" if self.tls else "plaintext"
        return f"{auth}, {tls}" + (" (loopback only)" if self.loopback else "")


def is_loopback(listen: str) -> bool:
    """Whether `host:port` binds only a loopback interface."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an empty host may mean any interface


def decide(
    listen: str,
    auth: str,
    *,
    tls_cert: str,
    tls_key: str,
    tls_client_ca: str,
    insecure: bool,
) -> Protection:
    """Applies the safe-defaults rule to the serve flags.

    Raises:
        UnsafeConfig: with what to change, when the result would be unsafe and
            `insecure` was not given.
    """
    if auth not in AUTH_MODES:
        raise UnsafeConfig(f"--auth must be one of {', '.join(AUTH_MODES)}")
    if bool(tls_cert) != bool(tls_key):
        raise UnsafeConfig("--tls-cert and --tls-key go together")
    if tls_client_ca and not tls_cert:
        raise UnsafeConfig("--tls-client-ca needs --tls-cert and --tls-key")
    loopback = is_loopback(listen)
    required = auth == "required" or (auth == "auto" and not loopback)
    protection = Protection(required, bool(tls_cert), bool(tls_client_ca), loopback)
    if not loopback and not insecure:
        missing = []
        if not protection.tls:
            missing.append("TLS (--tls-cert, --tls-key)")
        if not protection.auth_required:
            missing.append("tokens (--auth required)")
        if missing:
            raise UnsafeConfig(
                f"refusing to serve {listen} without {' and '.join(missing)}; "
                "give them, listen on 127.0.0.1, or pass --insecure if that is intended"
            )
    return protection


def server_credentials(tls_cert: str, tls_key: str, tls_client_ca: str) -> grpc.ServerCredentials:
    """TLS credentials for the server; with a client CA, clients must present a
    certificate it signed (mTLS)."""
    chain = Path(tls_cert).read_bytes()
    key = Path(tls_key).read_bytes()
    client_ca = Path(tls_client_ca).read_bytes() if tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    tls_ca: str = "", tls_cert: str = "", tls_key: str = ""
) -> grpc.ChannelCredentials:
    """TLS credentials for a client: trust `tls_ca` (empty: the system roots), and
    present `tls_cert`/`tls_key` for mTLS when given."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("a client certificate needs its key, and the key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )
