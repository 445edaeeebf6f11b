"""`godel-sidecar-monitor`: the monitor sidecar process.

Usage::

    godel-sidecar-monitor --listen 127.0.0.1:0 --pid 4242 \
        [--metrics cpu,memory,threads,fds,io] [--interval 1] \
        [--metrics-listen 127.0.0.1:0] [--agent-id a-7] [--coordinator HOST:PORT]

On start it prints ``{"event": "listening", "port": N, "metrics_port": M}`` on stdout.
It stops by itself, with exit status 0, when the watched process exits, and on SIGTERM
or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from godel_grpc import logs
from godel_grpc.errors import InvalidArgument
from sidecars._serving import STOP_GRACE, announce, split_address, stop_requested
from sidecars.monitor.exporter import MonitorGauges
from sidecars.monitor.monitor import Monitor, check_interval
from sidecars.monitor.reporting import CoordinatorReporter
from sidecars.monitor.sampler import METRICS, ProcessGone, TreeSampler, parse_metrics
from sidecars.monitor.server import serve_monitor

log = logging.getLogger("sidecars.monitor")

_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor sidecar's settings, as given on the command line."""

    listen: str
    pid: int
    metrics: frozenset[str] = frozenset(METRICS)
    interval: float = 1.0
    metrics_listen: str = "127.0.0.1:0"
    agent_id: str = ""
    coordinator: str = ""
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `godel-sidecar-monitor`."""
    parser = argparse.ArgumentParser(
        prog="godel-sidecar-monitor",
        description="Sample one agent process tree (psutil), serve the samples "
        "(MonitorSidecarService) and export them on /metrics.",
    )
    add = parser.add_argument
    # fmt: off
    add("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
        help="gRPC address; port 0 picks a free one (default 127.0.0.1:0)")
    add("--pid", type=int, required=True, help="process id of the agent to watch")
    add("--metrics", type=_metrics, default=frozenset(METRICS), metavar="LIST",
        help=f"comma-separated figures to collect among {','.join(METRICS)} (default all)")
    add("--interval", type=_interval, default=1.0, metavar="SECONDS",
        help="seconds between samples, 0.1 to 3600 (default 1)")
    add("--metrics-listen", default="127.0.0.1:0", metavar="HOST:PORT",
        help="HTTP address of /metrics; port 0 picks a free one (default 127.0.0.1:0)")
    add("--agent-id", default="", metavar="ID",
        help="the agent's id, put on samples and as the gauges' agent_id label")
    add("--coordinator", default="", metavar="HOST:PORT",
        help="coordinator to report samples to (optional)")
    add("--log-level", default="info", choices=_LOG_LEVELS,
        help="level of the sidecar's own logs on stderr (default info)")
    # fmt: on
    return parser


def parse_config(argv: Sequence[str] | None = None) -> MonitorConfig:
    """Parses the command line; exits with status 2 on bad usage (argparse's way)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        split_address(args.metrics_listen)
    except ValueError:
        parser.error(f"--metrics-listen must be HOST:PORT, got {args.metrics_listen!r}")
    return MonitorConfig(
        listen=args.listen,
        pid=args.pid,
        metrics=args.metrics,
        interval=args.interval,
        metrics_listen=args.metrics_listen,
        agent_id=args.agent_id,
        coordinator=args.coordinator,
        log_level=args.log_level,
    )


async def run(config: MonitorConfig) -> int:
    """Serves until the agent exits or a stop signal arrives; returns the exit status."""
    stop = stop_requested()
    try:
        sampler = TreeSampler(config.pid, config.metrics, config.agent_id)
    except ProcessGone as exc:
        log.error("nothing to watch", extra={"pid": config.pid, "error": str(exc)})
        return 1
    registry = CollectorRegistry()
    gauges = MonitorGauges(registry, config.metrics, config.agent_id)
    monitor = Monitor(
        sampler,
        interval=config.interval,
        on_sample=gauges.update,
        reporter=CoordinatorReporter(config.coordinator, config.agent_id),
    )
    try:
        sidecar = await serve_monitor(monitor, config.listen)
        host, port = split_address(config.metrics_listen)
        http_server: Any
        http_server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("cannot listen", extra={"error": str(exc)})
        return 1
    metrics_port = int(http_server.server_port)
    announce(port=sidecar.port, metrics_port=metrics_port)
    log.info(
        "listening",
        extra={
            "port": sidecar.port,
            "metrics_port": metrics_port,
            "pid": config.pid,
            "metrics": sorted(config.metrics),
            "interval": config.interval,
        },
    )
    sampling = asyncio.create_task(monitor.run(), name="monitor-schedule")
    stopped = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(monitor.exited.wait())
    await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping", extra={"reason": "agent exited" if exited.done() else "signal"})
    for waiter in (stopped, exited):
        waiter.cancel()
    await sidecar.stop_serving()
    await monitor.stop()
    await sampling
    await sidecar.stop(STOP_GRACE)
    http_server.shutdown()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `godel-sidecar-monitor` console script."""
    config = parse_config(argv)
    logs.configure(config.log_level)
    return asyncio.run(run(config))


def _metrics(text: str) -> frozenset[str]:
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    try:
        return check_interval(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.violations[0].description) from None


if __name__ == "__main__":
    sys.exit(main())
