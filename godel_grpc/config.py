"""Settings of `godel serve`, from flags or `GODEL_*` environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from godel_grpc.limits import LimitsConfig, add_limit_arguments
from godel_grpc.security import SecurityConfig, add_security_arguments


def env_default(name: str, default: str) -> str:
    """The value of GODEL_<NAME>, or `default`."""
    return os.environ.get(f"GODEL_{name}", default)


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything `godel serve` needs to start."""

    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: Path = Path(".godel")
    store: str = ""
    runtime: str = "local"
    log_level: str = "info"
    drain_grace: float = 10.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0
    task_retention: int = 100_000
    agent_exec: str = ""
    """Command spawned agents run per task when SpawnAgent names none."""
    security: SecurityConfig = field(default_factory=lambda: SecurityConfig())
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig())

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        """Builds the config from parsed `godel serve` arguments."""
        return cls(
            listen=args.listen,
            metrics_listen=args.metrics_listen,
            data_dir=Path(args.data_dir),
            store=args.store,
            runtime=args.runtime,
            log_level=args.log_level,
            drain_grace=args.drain_grace,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            task_retention=args.task_retention,
            agent_exec=args.agent_exec,
            security=SecurityConfig.from_args(args),
            limits=LimitsConfig.from_args(args),
        )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `godel serve` flags, each defaulting to its GODEL_* variable."""
    d = ServeConfig()
    parser.add_argument(
        "--listen",
        default=env_default("LISTEN", d.listen),
        help="gRPC address (host:port; port 0 picks a free one)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=env_default("METRICS_LISTEN", d.metrics_listen),
        help="Prometheus /metrics address (host:port; empty disables)",
    )
    parser.add_argument(
        "--data-dir",
        default=env_default("DATA_DIR", str(d.data_dir)),
        help="directory for the embedded event store",
    )
    parser.add_argument(
        "--store",
        default=env_default("STORE", d.store),
        help="event store URL: sqlite:///PATH, postgresql://USER@HOST/DB or memory:// "
        "(default: SQLite in --data-dir)",
    )
    parser.add_argument(
        "--runtime",
        default=env_default("RUNTIME", d.runtime),
        choices=["local", "kubernetes"],
        help="where spawned agents run",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("LOG_LEVEL", d.log_level),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=float(env_default("DRAIN_GRACE", str(d.drain_grace))),
        help="seconds SIGTERM waits for running tasks before exiting",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(env_default("HEARTBEAT_INTERVAL", str(d.heartbeat_interval))),
        help="seconds between agent heartbeats",
    )
    parser.add_argument(
        "--task-retention",
        type=int,
        default=int(env_default("TASK_RETENTION", str(d.task_retention))),
        help="ended tasks kept in memory for fast queries; older ones are read from the log",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=float(env_default("HEARTBEAT_TIMEOUT", str(d.heartbeat_timeout))),
        help="seconds of agent silence before it counts as lost",
    )
    parser.add_argument(
        "--agent-exec",
        default=env_default("AGENT_EXEC", d.agent_exec),
        metavar="CMD",
        help="command spawned agents run per task when the spawn names none "
        "(default: a built-in handler that echoes the payload)",
    )
    add_security_arguments(parser, env_default)
    add_limit_arguments(parser, env_default)
