"""The command line answers what needs no database without loading the run's modules:
asyncio, asyncpg, pyarrow, prometheus_client, uvloop and watchfiles cost ~0.3 s of every
start. A module imported again at the top of cli.py or commands.py fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("asyncio", "asyncpg", "pyarrow", "prometheus_client", "uvloop", "watchfiles", "ssl")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "ingestd.example.toml"


def _imported(args: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Top-level packages `python -m ingestd ARGS` imported, from -X importtime."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ingestd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, run


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["--no-such-flag"],
        ["--mode", "sideways"],
        ["check-config", "--help"],
        ["check-config", "--config", str(EXAMPLE)],
    ],
    ids=["version", "help", "unknown-flag", "bad-value", "check-config-help", "check-config"],
)
def test_answers_without_the_run_modules(args: list[str], tmp_path: Path) -> None:
    names, run = _imported(args, tmp_path)
    assert "ingestd" in names, run.stderr[-2000:]
    assert run.returncode in (0, 2), run.stderr[-2000:]
    assert not names & set(HEAVY), f"{sorted(names & set(HEAVY))} imported by ingestd {args}"


def test_importing_the_cli_loads_none_of_them(tmp_path: Path) -> None:
    code = f"import sys, ingestd.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_the_run_loads_without_pyarrow_compute(tmp_path: Path) -> None:
    """Its ~300 kernel wrappers cost ~0.1 s; a raw CSV load uses none (lazy.py)."""
    code = (
        "import sys, ingestd.cli, ingestd.service, ingestd.pipeline, ingestd.split;"
        "print('pyarrow.compute' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"


def test_a_lazy_module_imports_at_first_use_and_keeps_what_it_handed_out() -> None:
    import pyarrow as pa

    from ingestd.lazy import LazyModule, pyarrow_compute

    assert pyarrow_compute.cast(pa.array([1]), pa.string()).to_pylist() == ["1"]
    json = LazyModule("json")
    assert json.dumps([1]) == "[1]"
    assert "dumps" in vars(json)  # the second use is a plain attribute
