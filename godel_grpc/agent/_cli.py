"""`godel agent`: turn a command line or a Python callable into a running agent.

Every flag can also come from a ``GODEL_*`` environment variable named after it
(``--drain-grace`` → ``GODEL_DRAIN_GRACE``), which is how the runtime configures the
agents it launches; a flag on the command line wins over its variable. Repeatable
flags take a comma-separated list from their variable (``GODEL_ACTION=build,test``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import json_format

from godel_grpc import logs
from godel_grpc._proto.godel.v1 import agent_pb2
from godel_grpc.agent._agent import Agent
from godel_grpc.agent._attempt import Handler
from godel_grpc.agent._errors import AgentRejected
from godel_grpc.agent._exec import ExecHandler
from godel_grpc.auth.transport import channel_credentials
from godel_grpc.patterns.breaker import BreakerConfig

_log = logging.getLogger("godel_grpc.agent.cli")

DEFAULT_COORDINATOR = "127.0.0.1:50051"
_USAGE_ERROR = 2

_N = TypeVar("_N", int, float)


class UsageError(Exception):
    """The agent's configuration is incomplete or contradictory (exit code 2)."""


@dataclass
class AgentConfig:
    """Everything `godel agent` needs, after flags and environment are merged."""

    coordinator: str
    role: str
    actions: list[str] = field(default_factory=list)
    capacity: int = 1
    exec_command: str = ""
    handler: str = ""
    action_handlers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    drain_grace: float = 10.0
    log_level: str = "info"
    circuit_breaker: agent_pb2.CircuitBreakerConfig | None = None
    queues: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    logger: str = ""
    reflex: agent_pb2.ReflexConfig | None = None
    token: str = field(default="", repr=False)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of `godel agent` to `parser` (its defaults come from the env)."""
    add = parser.add_argument
    # fmt: off
    add("--coordinator", metavar="HOST:PORT[,HOST:PORT...]",
        help="coordinator address; several, comma-separated, for an active coordinator and "
             "its standbys, tried in turn on each reconnect "
             f"(GODEL_COORDINATOR; default {DEFAULT_COORDINATOR})")
    add("--role", help="role this agent serves; required (GODEL_ROLE)")
    add("--action", action="append", metavar="NAME",
        help="an action this agent serves; repeatable (GODEL_ACTION, comma-separated)")
    add("--capacity", metavar="N",
        help="attempts run at once, 1 to 10000 (GODEL_CAPACITY; default 1)")
    add("--exec", dest="exec_command", metavar="CMD",
        help="run each task with /bin/sh -c CMD: task JSON on stdin, output on stdout "
             "(GODEL_EXEC)")
    add("--handler", metavar="MODULE:FUNCTION",
        help="Python callable that handles the role's tasks (GODEL_HANDLER)")
    add("--action-handler", action="append", metavar="NAME=MODULE:FUNCTION",
        help="Python callable for one action; repeatable (GODEL_ACTION_HANDLER)")
    add("--name", help="unique agent name; default: chosen by the coordinator (GODEL_NAME)")
    add("--queue", action="append", metavar="NAME",
        help="a backpressure queue whose tasks this agent runs; repeatable (GODEL_QUEUE)")
    add("--partition", action="append", metavar="BULKHEAD/PARTITION",
        help="a bulkhead partition this agent joins; repeatable (GODEL_PARTITION)")
    add("--label", action="append", metavar="KEY=VALUE",
        help="a label shown with the agent; repeatable (GODEL_LABEL, comma-separated)")
    add("--drain-grace", metavar="SECONDS",
        help="on SIGTERM, how long running tasks may finish (GODEL_DRAIN_GRACE; default 10)")
    add("--log-level", metavar="LEVEL",
        help="debug, info, warning or error (GODEL_LOG_LEVEL; default info)")
    add("--circuit-breaker", metavar="JSON",
        help='the coordinator\'s breaker for this agent, as in the seed: '
             '\'{"enabled": true, "failureThreshold": 5, "timeout": 30, '
             '"halfOpenRequests": 3}\' (GODEL_CIRCUIT_BREAKER; default: on, those values)')
    add("--reflex", metavar="JSON",
        help='reflex pattern, as in the seed: \'{"enabled": true, "memory": "persistent", '
             '"feedbackLoop": true, "adaptationRate": 0.1}\' (GODEL_REFLEX; default off)')
    add("--logger", metavar="HOST:PORT",
        help="logger sidecar to ship log lines to; the agent keeps working while it is "
             "away (GODEL_LOGGER)")
    add("--token", help="bearer token for the coordinator; prefer GODEL_TOKEN, which "
        "`ps` does not show (GODEL_TOKEN)")
    add("--tls-ca", metavar="PEM",
        help="CA that signed the coordinator's certificate; connects with TLS (GODEL_TLS_CA)")
    add("--tls-cert", metavar="PEM",
        help="client certificate for a coordinator that requires mTLS (GODEL_TLS_CERT)")
    add("--tls-key", metavar="PEM", help="key of --tls-cert (GODEL_TLS_KEY)")
    # fmt: on


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentConfig:
    """Merges parsed flags with ``GODEL_*`` variables and checks the result.

    Raises:
        UsageError: with a message fit for the user.
    """

    def one(attr: str, var: str, default: str = "") -> str:
        value = getattr(args, attr, None)
        return str(value) if value is not None else environ.get(var, default)

    def many(attr: str, var: str) -> list[str]:
        values: list[str] | None = getattr(args, attr, None)
        if values is not None:
            return values
        return [v.strip() for v in environ.get(var, "").split(",") if v.strip()]

    role = one("role", "GODEL_ROLE")
    if not role:
        raise UsageError("--role (or GODEL_ROLE) is required")
    exec_command = one("exec_command", "GODEL_EXEC")
    handler = one("handler", "GODEL_HANDLER")
    if bool(exec_command) == bool(handler):
        raise UsageError(
            "give exactly one of --exec CMD or --handler MODULE:FUNCTION "
            "(or GODEL_EXEC / GODEL_HANDLER)"
        )
    return AgentConfig(
        coordinator=one("coordinator", "GODEL_COORDINATOR", DEFAULT_COORDINATOR),
        role=role,
        actions=many("action", "GODEL_ACTION"),
        capacity=_number(one("capacity", "GODEL_CAPACITY", "1"), int, "--capacity", 1, 10_000),
        exec_command=exec_command,
        handler=handler,
        action_handlers=_pairs(many("action_handler", "GODEL_ACTION_HANDLER"), "--action-handler"),
        name=one("name", "GODEL_NAME"),
        labels=_pairs(many("label", "GODEL_LABEL"), "--label"),
        queues=many("queue", "GODEL_QUEUE"),
        partitions=many("partition", "GODEL_PARTITION"),
        drain_grace=_number(
            one("drain_grace", "GODEL_DRAIN_GRACE", "10"), float, "--drain-grace", 0
        ),
        log_level=one("log_level", "GODEL_LOG_LEVEL", "info").lower(),
        circuit_breaker=_breaker(one("circuit_breaker", "GODEL_CIRCUIT_BREAKER")),
        logger=one("logger", "GODEL_LOGGER"),
        reflex=_reflex(one("reflex", "GODEL_REFLEX")),
        token=one("token", "GODEL_TOKEN"),
        tls_ca=one("tls_ca", "GODEL_TLS_CA"),
        tls_cert=one("tls_cert", "GODEL_TLS_CERT"),
        tls_key=one("tls_key", "GODEL_TLS_KEY"),
    )


def _breaker(text: str) -> agent_pb2.CircuitBreakerConfig | None:
    """Parses --circuit-breaker's JSON (the seed's `circuitBreaker` object)."""
    if not text:
        return None
    try:
        config = json_format.Parse(text, agent_pb2.CircuitBreakerConfig())
    except json_format.ParseError as error:
        raise UsageError(f"--circuit-breaker: {error}") from None
    if "enabled" not in text:
        config.enabled = True  # naming other settings implies wanting the breaker
    try:
        BreakerConfig.from_proto(config)  # settings that contradict each other
    except ValueError as error:
        raise UsageError(f"--circuit-breaker: {error}") from None
    return config


def _reflex(text: str) -> agent_pb2.ReflexConfig | None:
    """Parses --reflex's JSON (the seed's `reflex` object)."""
    if not text:
        return None
    try:
        config = json_format.Parse(text, agent_pb2.ReflexConfig())
    except json_format.ParseError as error:
        raise UsageError(f"--reflex: {error}") from None
    if config.memory not in ("", "session", "persistent"):
        raise UsageError(f"--reflex: memory must be session or persistent, not {config.memory!r}")
    if not 0 <= config.adaptation_rate <= 1:
        raise UsageError("--reflex: adaptationRate must be between 0 and 1")
    return config


def build_agent(config: AgentConfig) -> Agent:
    """Creates the agent and registers its handlers.

    Raises:
        UsageError: when a handler cannot be imported.
    """
    agent = Agent(
        config.coordinator,
        role=config.role,
        actions=config.actions,
        capacity=config.capacity,
        name=config.name,
        labels=config.labels,
        drain_grace=config.drain_grace,
        circuit_breaker=config.circuit_breaker,
        logger=config.logger,
        queues=config.queues,
        partitions=config.partitions,
        reflex=config.reflex,
        token=config.token,
        credentials=(
            channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
            if config.tls_ca or config.tls_cert or config.tls_key
            else None
        ),
    )
    if config.exec_command:
        agent.handler(ExecHandler(config.exec_command))
    else:
        agent.handler(import_handler(config.handler))
    for action, target in config.action_handlers.items():
        agent.action(action)(import_handler(target))
    return agent


def import_handler(target: str) -> Handler:
    """Imports ``module:attribute`` (the attribute may be dotted) as a handler.

    The working directory is put on the import path, as other tools that take
    ``module:callable`` do, so that project-local modules import from a console script.

    Raises:
        UsageError: when it cannot be imported or is not callable.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"handler {target!r} must look like MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: object = importlib.import_module(module_name)
    except Exception as exc:  # a module that fails to import is a configuration problem
        raise UsageError(f"cannot import handler module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError as exc:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from exc
    if not callable(value):
        raise UsageError(f"handler {target!r} is not callable")
    return value


def run_agent_command(args: argparse.Namespace) -> int:
    """Runs `godel agent` until it drains.

    SIGTERM or SIGINT drain the agent: no new work, running tasks get the drain grace
    to finish, unfinished ones are released, results are flushed. A second signal stops
    at once.

    Returns:
        0 after a clean drain, 1 when the coordinator rejected the agent or a second
        signal cut the drain short, 2 for a usage error.
    """
    try:
        config = resolve_config(args, os.environ)
        logs.configure(config.log_level)
        agent = build_agent(config)
    except (UsageError, ValueError) as exc:
        print(f"godel agent: error: {exc}", file=sys.stderr)
        return _USAGE_ERROR
    return asyncio.run(_serve(agent, config.drain_grace))


async def _serve(agent: Agent, grace: float) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []
    shutdowns: set[asyncio.Task[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            _log.info("signal received; draining", extra={"signal": sig.name, "grace": grace})
            task = loop.create_task(agent.shutdown(grace))
            shutdowns.add(task)
            task.add_done_callback(shutdowns.discard)
        else:
            _log.warning("second signal; stopping now", extra={"signal": sig.name})
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await agent.run()
    except AgentRejected as exc:
        _log.error(str(exc), extra={"code": exc.code.name})
        return 1
    except asyncio.CancelledError:
        if len(received) < 2:
            raise
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _number(
    text: str, kind: Callable[[str], _N], flag: str, low: float, high: float | None = None
) -> _N:
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{flag} must be {bounds}, got {text}")
    return value


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs
