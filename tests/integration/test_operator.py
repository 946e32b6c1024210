"""Operator commands: check-config, retry, and the progress line of --once on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli, write
from tests.helpers import csv_rows
from tests.pg import Db

REPO = Path(__file__).resolve().parents[2]


def test_check_config_accepts_the_example_and_says_what_it_found() -> None:
    result = run_cli(["check-config", str(REPO / "config" / "ingestd.example.toml")])
    assert result.code == 0, result.err
    assert (
        "contract companies: empresas/*.csv.gz -> public.companies (upsert, cnpj_basico"
        in result.out
    )
    assert "contract events: events/*.csv -> events (append, no key" in result.out


def test_check_config_rejects_a_bad_file_with_the_reason(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", '[[contracts]]\nname = "x"\ntable = "a b"\n')
    result = run_cli(["check-config", str(bad)])
    assert result.code == 2
    assert "table name 'a b' is not allowed" in result.err
    assert "Traceback" not in result.err


def test_retry_moves_failed_files_back_and_they_load(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "sub" / "late.csv", "id,v\n1,a\n2,b,c\n")
    assert cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id").code == 1
    failed = tmp_path / "failed" / "sub" / "late.csv"
    assert failed.exists() and failed.with_name("late.csv.error.json").exists()

    write(failed, "id,v\n1,a\n2,b\n")  # the fix
    result = run_cli(["retry", "--all-failed", "--inbox", str(inbox)])
    assert result.code == 0, result.err
    assert (inbox / "sub" / "late.csv").exists()
    assert not failed.exists() and not failed.with_name("late.csv.error.json").exists()
    assert cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id").code == 0
    assert db.val("SELECT count(*) FROM t") == 2


def test_retry_refuses_files_outside_the_failed_directory(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    elsewhere = write(tmp_path / "x.csv", "id\n1\n")
    result = run_cli(["retry", str(elsewhere), "--inbox", str(inbox)])
    assert result.code == 2 and "is not a file in the failed directory" in result.err
    assert elsewhere.exists()


def test_progress_line_on_a_terminal(dsn: str, db: Db, tmp_path: Path) -> None:
    files = [write(tmp_path / f"p{i}.csv", csv_rows(20000, start=0, value="x"))
             for i in range(3)]  # fmt: skip
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "--once", "--files", *map(str, files), "--dsn", dsn,
         "--table", "t", "--pk", "id", "--chunk-size", "2000", "--metrics-addr", "off"],
        stdout=subprocess.PIPE, stderr=follower, text=True,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    text = seen.decode()
    assert "\r[" in text and "files]" in text and "rows" in text and "MB/s" in text
    assert '"event": "batch_committed"' not in text  # info lines would garble the line
    assert "3 loaded" in out
