"""A file rewritten, appended to or deleted while it loads: never marked success half-loaded;
the new version loads later."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import wait_for
from tests.helpers import csv_rows, slow_inserts
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault
ROWS = 2_000


def _slow_target(db: Db) -> None:
    """Each batch takes a while, so the test can act between two batches."""
    db.execute("CREATE TABLE t (id text PRIMARY KEY, v text)")
    slow_inserts(db, "t", 0.15)


def _start(inbox: Path, dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingestd", "--once", "--inbox", str(inbox), "--dsn", dsn,
         "--table", "t", "--pk", "id", "--chunk-size", "100", "--metrics-addr", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _content(version: str) -> str:
    return csv_rows(ROWS, start=0, value=version)


def test_file_rewritten_mid_load_is_abandoned_then_new_version_loads(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    _slow_target(db)
    inbox = tmp_path / "inbox"
    f = write(inbox / "data.csv", _content("old"))
    proc = _start(inbox, dsn)
    wait_for(lambda: db.progress() >= 200, what="a few batches")
    time.sleep(0.05)
    write(f, _content("new") + "extra,row\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime whatever the clock
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    [m] = db.manifest()
    assert m["status"] == "failed" and "changed while it was being loaded" in m["notes"]
    assert 0 < m["rows"] < ROWS
    assert f.exists() and not (tmp_path / "failed").exists()  # left for the next run

    proc = _start(inbox, dsn)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert db.val("SELECT count(*) FROM t") == ROWS + 1
    assert db.val("SELECT count(*) FROM t WHERE v = 'new'") == ROWS
    versions = db.manifest()
    assert [v["status"] for v in versions] == ["failed", "success"]
    assert versions[1]["rows"] == ROWS + 1
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed")


def test_file_deleted_mid_load_fails_without_success(dsn: str, db: Db, tmp_path: Path) -> None:
    _slow_target(db)
    inbox = tmp_path / "inbox"
    f = write(inbox / "gone.csv", _content("x"))
    proc = _start(inbox, dsn)
    wait_for(lambda: db.progress() >= 200, what="a few batches")
    f.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    [m] = db.manifest()
    assert m["status"] == "failed" and "disappeared while it was being loaded" in m["notes"]
    assert m["rows"] < ROWS
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed")


def test_unique_violation_in_append_fails_the_file_and_others_load(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id text PRIMARY KEY, v text)")
    db.execute("INSERT INTO t VALUES ('5', 'existing')")
    a = write(tmp_path / "a.csv", "id,v\n1,a\n2,b\n")
    clash = write(tmp_path / "clash.csv", "id,v\n4,x\n5,clash\n")
    c = write(tmp_path / "c.csv", "id,v\n7,c\n")
    result = cli("--files", a, clash, c, "--table", "t", "--mode", "append", "--concurrency", "1")
    assert result.code == 1
    by_name = {Path(m["filename"]).name: m for m in db.manifest()}
    assert by_name["clash.csv"]["status"] == "failed"
    assert "duplicate key value violates unique constraint" in by_name["clash.csv"]["notes"]
    assert "Key (id)=(5) already exists" in by_name["clash.csv"]["notes"]
    assert by_name["clash.csv"]["attempts"] == 1
    assert by_name["a.csv"]["status"] == by_name["c.csv"]["status"] == "success"
    assert db.fetch("SELECT id FROM t ORDER BY id") == [
        {"id": "1"}, {"id": "2"}, {"id": "5"}, {"id": "7"},
    ]  # fmt: skip
    check_books(db, None, None, None, files=(a, clash, c))
