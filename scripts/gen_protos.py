"""Generates godel_grpc/_proto from protos/ with grpcio-tools and mypy-protobuf.

The generated code is committed so that a plain install needs no compiler; `--check`
regenerates into a scratch folder and fails when the committed copy differs, so stale
generated code cannot slip through `make test` or `make lint`.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "godel_grpc" / "_proto"
PACKAGE_PREFIX = "godel_grpc._proto"
_IMPORT = re.compile(r"^(from|import) godel\.v1", re.MULTILINE)


def _generate(dest: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--mypy_out={dest}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--mypy_grpc_out={dest}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in dest.rglob("*.py*"):
        text = path.read_text()
        path.write_text(_IMPORT.sub(rf"\1 {PACKAGE_PREFIX}.godel.v1", text))
    for folder in [dest, *[p for p in dest.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()


def _differences(a: Path, b: Path) -> list[str]:
    files_a = {
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    files_b = {
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    diffs = sorted(str(p) for p in files_a ^ files_b)
    for rel in files_a & files_b:
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(str(rel))
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "_proto"
        fresh.mkdir()
        _generate(fresh)
        if opts.check:
            diffs = _differences(fresh, OUT) if OUT.exists() else ["(missing)"]
            if diffs:
                print("generated code is stale; run `make protos`:", *diffs, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(fresh, OUT)
        os.utime(OUT)
    print(f"generated {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
