"""The code base's own standards, checked with each test run: buf lint on the protos,
ruff and mypy on the Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, in_ci

BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_buf_lint_is_clean() -> None:
    buf = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        message = "buf is not installed (run `bash scripts/ensure_tools.sh`)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    checked = run(str(buf), "lint")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ruff_is_clean() -> None:
    checked = run(
        str(BIN / "ruff"),
        "check",
        "godel_grpc",
        "sidecars",
        "tests",
        "bench",
        "scripts",
        "examples",
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_is_clean() -> None:
    checked = run(str(BIN / "mypy"), "godel_grpc", "sidecars")
    assert checked.returncode == 0, checked.stdout + checked.stderr
