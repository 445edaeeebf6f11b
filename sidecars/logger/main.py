"""`godel-sidecar-logger`: the logger sidecar process.

Usage::

    godel-sidecar-logger --listen 127.0.0.1:0 --dir /var/log/agent-7 --level info \
        [--max-bytes 10485760] [--backups 5] [--agent-id a-7]

On start it prints ``{"event": "listening", "port": N}`` on stdout, then serves until
SIGTERM or SIGINT, writes what it has received and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from godel_grpc import logs
from sidecars._serving import STOP_GRACE, announce, stop_requested
from sidecars.logger.book import LogBook
from sidecars.logger.filter import LEVELS
from sidecars.logger.server import serve_logger
from sidecars.logger.writer import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, RotatingJsonLines

log = logging.getLogger("sidecars.logger")


@dataclass(frozen=True)
class LoggerConfig:
    """The logger sidecar's settings, as given on the command line."""

    listen: str
    directory: Path
    level: str = "info"
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS
    agent_id: str = ""
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `godel-sidecar-logger`."""
    parser = argparse.ArgumentParser(
        prog="godel-sidecar-logger",
        description="Receive one agent's log records, keep them in rotating JSON-lines files "
        "and serve them back (LoggerSidecarService).",
    )
    add = parser.add_argument
    # fmt: off
    add("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
        help="gRPC address; port 0 picks a free one (default 127.0.0.1:0)")
    add("--dir", required=True, type=Path, metavar="PATH",
        help="directory of agent.log and its backups; created if missing")
    add("--level", default="info", choices=LEVELS,
        help="lowest level written; lower records are counted as filtered (default info)")
    add("--max-bytes", type=_positive, default=DEFAULT_MAX_BYTES, metavar="N",
        help=f"size at which agent.log rotates (default {DEFAULT_MAX_BYTES})")
    add("--backups", type=_non_negative, default=DEFAULT_BACKUPS, metavar="N",
        help=f"rotated files kept, agent.log.1 to agent.log.N (default {DEFAULT_BACKUPS})")
    add("--agent-id", default="", metavar="ID",
        help="agent id written on records that arrive without one")
    add("--log-level", default="info", choices=LEVELS,
        help="level of the sidecar's own logs on stderr (default info)")
    # fmt: on
    return parser


def parse_config(argv: Sequence[str] | None = None) -> LoggerConfig:
    """Parses the command line; exits with status 2 on bad usage (argparse's way)."""
    args = build_parser().parse_args(argv)
    return LoggerConfig(
        listen=args.listen,
        directory=args.dir,
        level=args.level,
        max_bytes=args.max_bytes,
        backups=args.backups,
        agent_id=args.agent_id,
        log_level=args.log_level,
    )


async def run(config: LoggerConfig) -> int:
    """Serves until a stop signal, then flushes and returns the exit status."""
    stop = stop_requested()
    files = RotatingJsonLines(config.directory, max_bytes=config.max_bytes, backups=config.backups)
    book = LogBook(files, level=config.level, agent_id=config.agent_id)
    await book.start()
    try:
        sidecar = await serve_logger(book, config.listen)
    except OSError as exc:
        log.error("cannot listen", extra={"listen": config.listen, "error": str(exc)})
        await book.close()
        return 1
    announce(port=sidecar.port)
    log.info(
        "listening",
        extra={
            "port": sidecar.port,
            "file": str(files.path),
            "min_level": config.level,
            "next_sequence": book.last_sequence + 1,
        },
    )
    await stop.wait()
    log.info("stopping")
    await sidecar.stop_serving()
    await book.begin_close()
    await sidecar.stop(STOP_GRACE)
    await book.close()
    log.info("stopped", extra={**vars(book.totals), "lost": book.lost})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `godel-sidecar-logger` console script."""
    config = parse_config(argv)
    logs.configure(config.log_level)
    try:
        return asyncio.run(run(config))
    except OSError as exc:  # the directory or file cannot be created
        log.error("cannot open the log file", extra={"error": str(exc)})
        return 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


if __name__ == "__main__":
    sys.exit(main())
