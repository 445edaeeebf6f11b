"""The `godel` command: `serve`, `agent`, `token` and `demo`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from godel_grpc import __version__, logs
from godel_grpc.config import ServeConfig, add_serve_arguments


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subcommand per job."""
    parser = argparse.ArgumentParser(prog="godel", description="Run fleets of agents over gRPC.")
    parser.add_argument("--version", action="version", version=f"godel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the coordinator")
    add_serve_arguments(serve)
    agent = commands.add_parser("agent", help="run an agent that connects to a coordinator")
    from godel_grpc.agent import add_agent_arguments

    add_agent_arguments(agent)
    token = commands.add_parser("token", help="create, revoke and list bearer tokens")
    from godel_grpc.auth.cli import add_token_arguments

    add_token_arguments(token)
    demo = commands.add_parser("demo", help="run the seed's patterns end to end on local defaults")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `godel` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from godel_grpc.auth.transport import UnsafeConfig
        from godel_grpc.server import serve

        config = ServeConfig.from_args(args)
        logs.configure(config.log_level)
        try:
            return asyncio.run(serve(config))
        except UnsafeConfig as exc:
            print(f"godel serve: {exc}", file=sys.stderr)
            return 2
    if args.command == "agent":
        from godel_grpc.agent import run_agent_command

        return run_agent_command(args)
    if args.command == "token":
        from godel_grpc.auth.cli import run_token_command

        return run_token_command(args)
    if args.command == "demo":
        from godel_grpc.demo import run_demo

        return asyncio.run(run_demo(keep=args.keep))
    return 2


if __name__ == "__main__":
    sys.exit(main())
