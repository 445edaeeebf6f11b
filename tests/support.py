"""Helpers shared by the integration tests: real coordinator and agent processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
T = TypeVar("T")


def in_ci() -> bool:
    """True under CI, where a missing real component fails instead of skipping."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """The path of an external tool; skips on a laptop without it, fails under CI."""
    path = shutil.which(name) or (
        str(Path(PYTHON).parent / name) if (Path(PYTHON).parent / name).exists() else None
    )
    if path is None:
        message = f"{name} is not installed (run `bash scripts/ensure_tools.sh`)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


POSTGRES_URL = os.environ.get(
    "GODEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The maintenance database of the PostgreSQL server tests use; each test gets its own
database created from it."""


def _postgres(*statements: str, url: str = "") -> None:
    """Runs `statements` on the maintenance database (or `url`), from any thread or loop."""
    import asyncio
    import concurrent.futures

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url or POSTGRES_URL, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def require_postgres() -> str:
    """The maintenance database URL; skips on a laptop without PostgreSQL, fails under CI."""
    try:
        _postgres("SELECT 1")
    except Exception as exc:  # any failure to connect means "not available"
        message = f"PostgreSQL is not reachable at {POSTGRES_URL.rpartition('@')[2]}: {exc}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


class PostgresDatabases:
    """A fresh, uniquely named database for one test, dropped by `drop_all`, so tests
    never see each other's rows. Within it, each key (a store directory) gets its own
    schema, so that the examples of a property-based test start empty too without
    paying for a database each."""

    def __init__(self) -> None:
        require_postgres()
        self._database = ""
        self._schemas: dict[object, str] = {}

    def url_for(self, key: object = None) -> str:
        """The URL of the test's database (key None), or of a schema of it for `key`,
        creating either on first use."""
        import uuid

        if not self._database:
            self._database = f"godel_test_{uuid.uuid4().hex[:16]}"
            _postgres(f"CREATE DATABASE {self._database}")
        url = POSTGRES_URL.rpartition("/")[0] + "/" + self._database
        if key is None:
            return url
        schema = self._schemas.get(key)
        if schema is None:
            schema = self._schemas[key] = f"s_{uuid.uuid4().hex[:12]}"
            _postgres(f"CREATE SCHEMA {schema}", url=url)
        return f"{url}?search_path={schema}"

    def drop_all(self) -> None:
        database, self._database, self._schemas = self._database, "", {}
        if database:
            _postgres(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database's URL, dropped afterwards."""
    databases = PostgresDatabases()
    try:
        yield databases.url_for()
    finally:
        databases.drop_all()


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo importable, no inherited GODEL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GODEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


class LineReader:
    """Collects a child's output lines on a thread so tests can wait for one."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        with stream:  # the child's end closed: nothing more will come, and the pipe is ours
            for raw in stream:
                line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of stream marker
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> str:  # type: ignore[no-untyped-def]
        """The first line satisfying `predicate`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(self.lines):
                    line = self.lines[seen]
                    seen += 1
                    if line and predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        "no matching line; output so far:\n" + "\n".join(self.lines[-40:])
                    )
                self._cond.wait(remaining)


class CoordinatorProcess:
    """A real `godel serve` child process on loopback with its own data directory."""

    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: LineReader | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0, until: str = "serving") -> CoordinatorProcess:
        """Starts the process and waits for its `until` log line ("serving" once it is
        active; "standby" for one waiting on another coordinator's log)."""
        args = [
            PYTHON,
            "-m",
            "godel_grpc.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=child_env(), cwd=ROOT
        )
        self.log = LineReader(self.proc.stderr)
        record = json.loads(self.log.wait_for(lambda text: '"listening"' in text))
        self.port = record["port"]
        self.metrics_port = record["metrics_port"]
        self.log.wait_for(lambda text: f'"{until}"' in text)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class AgentProcess:
    """A real `godel agent` child process."""

    def __init__(
        self, address: str, role: str, *extra_args: str, env: dict[str, str] | None = None
    ) -> None:
        args = [
            PYTHON,
            "-m",
            "godel_grpc.cli",
            "agent",
            "--coordinator",
            address,
            "--role",
            role,
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            args,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=child_env(**(env or {})),
            cwd=ROOT,
        )
        self.log = LineReader(self.proc.stderr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def coordinator_process(data_dir: Path, *args: str) -> Iterator[CoordinatorProcess]:
    """Starts a coordinator process and always kills it afterwards."""
    process = CoordinatorProcess(data_dir, *args)
    try:
        yield process.start()
    finally:
        process.stop()


@contextmanager
def agent_processes(
    address: str, role: str, count: int, *args: str, env: dict[str, str] | None = None
) -> Iterator[list[AgentProcess]]:
    """Starts `count` agent processes and always kills them afterwards."""
    agents: list[AgentProcess] = []
    try:
        for index in range(count):
            agents.append(AgentProcess(address, role, "--name", f"{role}-{index}", *args, env=env))
        yield agents
    finally:
        for agent in agents:
            agent.stop()


async def grpcurl_json(address: str, method: str, data: str, *flags: str) -> dict:  # type: ignore[type-arg]
    """Calls `method` with the real grpcurl and returns its JSON reply. Runs in a thread:
    an in-process server under test shares the caller's event loop. `flags` replace
    ``-plaintext`` (TLS files, ``-H "authorization: Bearer …"``)."""
    import asyncio
    import json as json_module

    binary = require_tool("grpcurl")
    done = await asyncio.to_thread(
        subprocess.run,
        [binary, *(flags or ["-plaintext"]), "-d", data, address, method],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json_module.loads(done.stdout)  # type: ignore[no-any-return]


async def wait_for_agents(client, count: int, role: str = "", timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Waits until `count` agents (of `role`) are connected and READY, asking the
    coordinator as a user would; fails after `timeout` seconds."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while sum(a.state == a.STATE_READY for a in await client.agents.list(role=role)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{count} agents did not connect"
        await asyncio.sleep(0.05)


def godel_token(data_dir: Path, *args: str) -> str:
    """Runs `godel token ARGS --data-dir DATA_DIR` as a user would; returns its stdout
    (the token, for `create`)."""
    done = subprocess.run(
        [PYTHON, "-m", "godel_grpc.cli", "token", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def until(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0) -> T:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
