"""Child processes of the benchmark: started in their own process groups, always killed.

Every child gets a new session (``start_new_session=True``), so its process group id is
its pid and killing the group also kills anything it spawned. `Children` remembers each
child it started and kills every group in `kill_all`, which the entry point calls in a
``finally`` (a SIGTERM to the benchmark is turned into an exception so that runs too).
As a last resort each child also asks the kernel to kill it when the benchmark dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable


_SETPRIV = shutil.which("setpriv")


def _dying_with_parent(args: Sequence[str]) -> list[str]:
    """`args` run through util-linux ``setpriv --pdeathsig KILL`` when it is installed:
    the kernel then kills the child if the benchmark dies, even by SIGKILL, when no
    ``finally`` can run. (A ``preexec_fn`` would do the same but forces a plain fork of
    a process with gRPC threads, which gRPC warns about and which can deadlock.)"""
    if _SETPRIV is None:
        return list(args)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: the repo importable, no inherited GODEL_* settings.

    Inherited GODEL_* variables would silently change what `godel serve` and `godel agent`
    do (their flags default to them), and the figures would no longer mean the defaults.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GODEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@dataclass
class Child:
    """One started child process and, when its stderr went to a file, that file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: pathlib.Path | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the child has not exited yet."""
        return self.process.returncode is None

    def log_lines(self) -> list[str]:
        """Whatever the child wrote to its log file so far."""
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def kill(self) -> None:
        """Kills the child's whole process group; harmless if it already exited."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def reap(self, timeout: float = 5.0) -> None:
        """Waits for the killed child so that no zombie is left behind."""
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self.process.wait(), timeout)


class Children:
    """Every child the benchmark started, so that all of them can be killed at the end."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self._log_dir = log_dir
        self._children: list[Child] = []

    async def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> Child:
        """Starts `args` in a new session.

        Args:
            name: label for errors and for the log file's name.
            args: the command line.
            pipes: give the child a stdin and stdout pipe (for a line protocol with the
                benchmark); otherwise stdin and stdout are /dev/null.
            env: the environment; `child_env()` by default.

        Stderr always goes to a file in the log directory, never to a pipe: a pipe that
        nobody drains fills up (a coordinator logs one line per agent link) and would
        block the child mid-benchmark.
        """
        log_path = self._log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        stdio = asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL
        process = await asyncio.create_subprocess_exec(
            *_dying_with_parent(args),
            stdin=stdio,
            stdout=stdio,
            stderr=log_file,
            env=env if env is not None else child_env(),
            cwd=ROOT,
            start_new_session=True,
        )
        child = Child(name, process, log_path, log_file)
        self._children.append(child)
        return child

    async def stop(self, child: Child) -> None:
        """Kills one child (and its group) and reaps it."""
        child.kill()
        await child.reap()

    async def kill_all(self) -> None:
        """Kills every child started so far and reaps them."""
        self.kill_now()
        for child in self._children:
            await child.reap()
        self._children.clear()

    def kill_now(self) -> None:
        """Kills every child's group without waiting: safe outside the event loop, for
        the last-resort ``finally`` when the loop itself was interrupted."""
        for child in self._children:
            child.kill()


async def wait_for_log(
    child: Child, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """The first JSON log record of `child` that satisfies `predicate`.

    Polls the log file: the children log JSON lines (`godel_grpc.logs`) to stderr, which
    goes to that file.

    Raises:
        RuntimeError: the child exited first, or nothing matched within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        for line in child.log_lines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and predicate(record):
                    return record
        if not child.alive():
            tail = "\n".join(child.log_lines()[-20:])
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            tail = "\n".join(child.log_lines()[-20:])
            raise RuntimeError(f"{child.name} did not log what was expected:\n{tail}")
        await asyncio.sleep(0.05)


async def read_json_line(child: Child, timeout: float = 30.0) -> dict[str, Any]:
    """The next line of a piped child's stdout, parsed as a JSON object.

    Raises:
        RuntimeError: the child closed its stdout (exited) or was silent for `timeout`.
    """
    assert child.process.stdout is not None
    try:
        raw = await asyncio.wait_for(child.process.stdout.readline(), timeout)
    except TimeoutError:
        raise RuntimeError(f"{child.name} said nothing for {timeout:g} s") from None
    if not raw:
        await child.reap(1.0)
        tail = "\n".join(child.log_lines()[-20:])
        raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{tail}")
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise RuntimeError(f"{child.name} wrote {raw!r}, not a JSON object")
    return value


async def send_line(child: Child, text: str) -> None:
    """Writes one line to a piped child's stdin."""
    assert child.process.stdin is not None
    child.process.stdin.write(text.encode() + b"\n")
    await child.process.stdin.drain()


def emit(value: dict[str, Any]) -> None:
    """For child modules: one JSON line on stdout, flushed, for the benchmark to read."""
    print(json.dumps(value), flush=True)
