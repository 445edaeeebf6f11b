"""`godel agent` configuration: flags, GODEL_* variables and handler imports."""

from __future__ import annotations

import argparse

import pytest

from godel_grpc.agent import ExecHandler, add_agent_arguments, run_agent_command
from godel_grpc.agent._cli import UsageError, build_agent, import_handler, resolve_config
from tests.agents import handlers


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return parser.parse_args(argv)


def test_every_setting_can_come_from_the_environment() -> None:
    env = {
        "GODEL_COORDINATOR": "coord:1",
        "GODEL_ROLE": "builder",
        "GODEL_ACTION": "lint, test",
        "GODEL_CAPACITY": "4",
        "GODEL_EXEC": "cat",
        "GODEL_NAME": "b-1",
        "GODEL_LABEL": "zone=a,tier=gold",
        "GODEL_DRAIN_GRACE": "2.5",
        "GODEL_LOG_LEVEL": "DEBUG",
        "GODEL_TOKEN": "gdl_secret",
        "GODEL_TLS_CA": "ca.pem",
    }

    config = resolve_config(parse(), env)

    assert config.coordinator == "coord:1"
    assert config.role == "builder"
    assert config.actions == ["lint", "test"]
    assert config.capacity == 4
    assert config.exec_command == "cat"
    assert config.name == "b-1"
    assert config.labels == {"zone": "a", "tier": "gold"}
    assert config.drain_grace == 2.5
    assert config.log_level == "debug"
    assert (config.token, config.tls_ca) == ("gdl_secret", "ca.pem")
    assert "gdl_secret" not in repr(config)


def test_flags_win_over_the_environment() -> None:
    args = parse("--role", "r2", "--capacity", "3", "--action", "x", "--handler", "m:f")
    env = {"GODEL_ROLE": "r1", "GODEL_CAPACITY": "9", "GODEL_ACTION": "y"}

    config = resolve_config(args, env)

    assert (config.role, config.capacity, config.actions) == ("r2", 3, ["x"])
    assert config.coordinator == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--role"),
        (("--role", "r"), "exactly one of --exec"),
        (("--role", "r", "--exec", "cat", "--handler", "m:f"), "exactly one of --exec"),
        (("--role", "r", "--exec", "cat", "--capacity", "0"), "--capacity must be between"),
        (("--role", "r", "--exec", "cat", "--capacity", "many"), "--capacity must be a number"),
        (("--role", "r", "--exec", "cat", "--label", "novalue"), "--label takes KEY=VALUE"),
        (("--role", "r", "--exec", "cat", "--drain-grace", "-1"), "--drain-grace must be"),
        (("--role", "r", "--exec", "cat", "--reflex", "{"), "--reflex"),
        (("--role", "r", "--exec", "cat", "--reflex", '{"memory": "forever"}'), "memory must"),
        (("--role", "r", "--exec", "cat", "--reflex", '{"adaptationRate": 2}'), "adaptationRate"),
    ],
)
def test_bad_configurations_are_usage_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_config(parse(*argv), {})


def test_usage_errors_exit_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_agent_command(parse("--role", "r", "--exec", "cat", "--handler", "m:f")) == 2
    assert "godel agent: error: give exactly one of --exec" in capsys.readouterr().err


def test_handlers_import_from_module_and_attribute() -> None:
    assert import_handler("tests.agents.handlers:echo") is handlers.echo


@pytest.mark.parametrize(
    "target", ["no_colon", "tests.agents.nothing_here:f", "tests.agents.handlers:missing"]
)
def test_unimportable_handlers_are_usage_errors(target: str) -> None:
    with pytest.raises(UsageError):
        import_handler(target)


def test_build_agent_wires_exec_and_action_handlers() -> None:
    args = parse(
        "--role",
        "builder",
        "--exec",
        "cat",
        "--action",
        "deploy",
        "--action-handler",
        "echo=tests.agents.handlers:echo",
    )

    agent = build_agent(resolve_config(args, {}))

    assert agent.role == "builder"
    assert agent.actions == ("deploy", "echo")
    assert isinstance(agent._default.fn if agent._default else None, ExecHandler)


def test_reflex_takes_the_seed_object_from_flag_or_environment() -> None:
    seed = '{"enabled": true, "memory": "persistent", "feedbackLoop": true, "adaptationRate": 0.1}'
    config = resolve_config(parse("--role", "r", "--exec", "cat"), {"GODEL_REFLEX": seed})
    assert config.reflex is not None and config.reflex.memory == "persistent"
    assert config.reflex.feedback_loop and config.reflex.adaptation_rate == pytest.approx(0.1)
    agent = build_agent(config)
    assert agent._hello().reflex.enabled  # what the coordinator hears
    assert resolve_config(parse("--role", "r", "--exec", "cat"), {}).reflex is None


def test_circuit_breaker_json_takes_every_option() -> None:
    # Given the seed's object plus the options past the seed, as --circuit-breaker
    text = (
        '{"failureThreshold": 5, "timeout": 30, "halfOpenRequests": 3, '
        '"failureRateThreshold": 0.5, "windowSize": 20, "minimumCalls": 5, '
        '"slowCallSeconds": 2.5, "slowCallRateThreshold": 0.8}'
    )
    config = resolve_config(parse("--role", "r", "--exec", "cat", "--circuit-breaker", text), {})
    breaker = config.circuit_breaker
    assert breaker is not None and breaker.enabled  # naming settings turns it on
    assert (breaker.window_size, breaker.minimum_calls) == (20, 5)
    assert (breaker.slow_call_seconds, breaker.slow_call_rate_threshold) == (2.5, 0.8)
    # And settings that contradict each other are a usage error before connecting
    contradictory = '{"windowSize": 4, "minimumCalls": 5}'
    with pytest.raises(UsageError, match="minimum_calls"):
        resolve_config(
            parse("--role", "r", "--exec", "cat", "--circuit-breaker", contradictory), {}
        )
    # And a misspelled option is a usage error, not a silent default
    with pytest.raises(UsageError):
        resolve_config(
            parse("--role", "r", "--exec", "cat", "--circuit-breaker", '{"slowCalls": 1}'), {}
        )
