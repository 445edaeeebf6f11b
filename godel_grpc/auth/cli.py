"""`godel token`: create, revoke and list the coordinator's bearer tokens.

Works on the token file of a data directory, whether or not a coordinator runs on it:
a running coordinator picks changes up on its next call.

    TOKEN=$(godel token create --scopes read,write --name ci)   # printed once
    godel token list
    godel token revoke ci
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from godel_grpc.auth.scopes import AGENT, SCOPES, parse_scopes
from godel_grpc.auth.tokens import TokenFile
from godel_grpc.config import env_default


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `godel token create|revoke|list` to `parser`."""
    parser.add_argument(
        "--data-dir",
        default=env_default("DATA_DIR", ".godel"),
        help="the coordinator's data directory, which holds tokens.json",
    )
    actions = parser.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser("create", help="make a token and print it once")
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    create.add_argument("--name", default="", help="a unique name to revoke it by")
    create.add_argument(
        "--agent",
        default="",
        help="for the agent scope: the agent name the token may connect as (default: --name)",
    )
    revoke = actions.add_parser("revoke", help="revoke a token by id or name")
    revoke.add_argument("token", metavar="ID|NAME")
    show = actions.add_parser("list", help="list tokens (never the tokens themselves)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    for sub in (create, revoke, show):  # also accepted after the action
        sub.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_token_command(args: argparse.Namespace) -> int:
    """Runs one `godel token` action; 0 on success, 2 on a usage error."""
    store = TokenFile(Path(args.data_dir))
    try:
        if args.token_command == "create":
            scopes = parse_scopes(args.scopes)
            agent = args.agent or (args.name if AGENT in scopes else "")
            record, token = store.create(scopes, name=args.name, agent=agent)
            print(token)
            print(
                f"created {record.id} ({record.name}) with {', '.join(record.scopes)}"
                + (f", agent {record.agent}" if record.agent else "")
                + "; the token is shown only now",
                file=sys.stderr,
            )
            return 0
        if args.token_command == "revoke":
            record = store.revoke(args.token)
            print(f"revoked {record.id} ({record.name})", file=sys.stderr)
            return 0
        for record in store.records():
            row = {
                "id": record.id,
                "name": record.name,
                "scopes": list(record.scopes),
                "agent": record.agent,
                "created": _when(record.created),
                "revoked": _when(record.revoked) if record.revoked is not None else "",
            }
            if args.json:
                print(json.dumps(row))
            else:
                state = f"revoked {row['revoked']}" if row["revoked"] else "live"
                agent = f" agent={record.agent}" if record.agent else ""
                print(
                    f"{record.id}\t{record.name}\t{','.join(record.scopes)}{agent}\t"
                    f"{row['created']}\t{state}"
                )
        return 0
    except KeyError as exc:
        print(f"godel token: no live token with id or name {exc.args[0]!r}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"godel token: {exc}", file=sys.stderr)
        return 2


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
