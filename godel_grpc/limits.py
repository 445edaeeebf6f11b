"""Resource limits of the coordinator's gRPC port, as `godel serve` flags.

Each limit bounds what one caller can make the coordinator hold or do: message size
(memory per call), HTTP/2 streams per connection and concurrent RPCs (memory and tasks),
ping rate (a ping flood is answered with GOAWAY), and requests per second per principal
(`auth/ratelimit.py`). The defaults leave room for the agents and clients of one fleet.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Limits of the gRPC server."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request message in bytes; bigger ones are refused (RESOURCE_EXHAUSTED)
    before they are decoded, so a huge message costs no parsing. gRPC's own default,
    and what agents keep their batches under; a single payload is at most 1 MiB."""
    max_concurrent_streams: int = 1000
    """HTTP/2 streams one connection may have open at once. Measured trade-off: at 100,
    a client running a few hundred calls at once on one connection has some refused
    (REFUSED_STREAM, seen as UNAVAILABLE); at 1,000 it has none, but a burst of streams
    opened and reset (HTTP/2 "rapid reset") makes gRPC cancel a few unrelated calls of
    other clients while it lasts (tests/integration/test_abuse.py prints how many)."""
    max_concurrent_rpcs: int = 10_000
    """RPCs the server runs at once, agent links and watchers included; beyond it new
    calls get RESOURCE_EXHAUSTED."""
    min_ping_interval: float = 10.0
    """Seconds a client must leave between keepalive pings on an idle connection
    (agents ping every 20)."""
    max_ping_strikes: int = 2
    """Pings that come too often before the server sends GOAWAY and closes the
    connection."""
    rate_limit: float = 5000.0
    """Requests per second each principal may start; 0 means no limit. About what this
    2-core machine serves in unary calls (5,300/s measured by `make bench`): one caller
    may use the whole server, but a runaway one is held there. With authentication off
    every caller is the same principal, so a lower default capped the whole service; at
    1,000 a single producer submitting one task per call ran out of tokens."""
    rate_burst: float = 10_000.0
    """Requests a principal may start at once after a quiet spell."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LimitsConfig:
        """The limits from parsed `godel serve` arguments."""
        return cls(
            max_message_bytes=args.max_message_bytes,
            max_concurrent_streams=args.max_concurrent_streams,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            min_ping_interval=args.min_ping_interval,
            max_ping_strikes=args.max_ping_strikes,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
        )

    def server_options(self) -> list[tuple[str, Any]]:
        """The gRPC server channel options that enforce these limits."""
        interval_ms = int(self.min_ping_interval * 1000)
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # Agents ping an idle link to notice a dead coordinator; allow that much.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", interval_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]


def add_limit_arguments(
    parser: argparse.ArgumentParser, env_default: Callable[[str, str], str]
) -> None:
    """Adds the limit flags of `godel serve`."""
    d = LimitsConfig()

    def add(flag: str, kind: type, default: Any, text: str) -> None:
        var = flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(
            flag,
            type=kind,
            default=kind(env_default(var, str(default))),
            help=f"{text} (default: %(default)s)",
        )

    add("--max-message-bytes", int, d.max_message_bytes, "largest request message, in bytes")
    add("--max-concurrent-streams", int, d.max_concurrent_streams, "HTTP/2 streams per connection")
    add("--max-concurrent-rpcs", int, d.max_concurrent_rpcs, "RPCs served at once")
    add(
        "--min-ping-interval",
        float,
        d.min_ping_interval,
        "seconds clients must leave between pings on an idle connection",
    )
    add("--max-ping-strikes", int, d.max_ping_strikes, "too-frequent pings tolerated before GOAWAY")
    add("--rate-limit", float, d.rate_limit, "requests per second per principal (0: no limit)")
    add("--rate-burst", float, d.rate_burst, "requests per principal at once")
