"""kill -9 right after the batch that adds a column (schema_evolution = add), then a resume:
the column exists once, its change is recorded once, every row is there exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import write
from tests.daemon import wait_for
from tests.pg import Db

pytestmark = pytest.mark.fault

TOTAL = 40_000
CHUNK = 1_000


def _command(f: Path, dsn: str, mode: str) -> list[str]:
    pk = ["--pk", "id"] if mode != "append" else []
    return [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "events", "--mode", mode, *pk, "--chunk-size", str(CHUNK),
        "--schema-evolution", "add", "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip


def _progress(db: Db, name: str) -> int:
    try:
        return int(
            db.val(
                "SELECT coalesce(max(rows), 0) FROM ingestion_manifest WHERE filename LIKE $1",
                f"%{name}",
            )
        )
    except asyncpg.UndefinedTableError:  # the manifest is made by the first run
        return 0


@pytest.mark.parametrize(("mode", "delay_s"), [("append", 0.0), ("upsert", 0.02)])
def test_kill_9_after_the_adding_batch_then_resume(
    dsn: str, db: Db, tmp_path: Path, mode: str, delay_s: float
) -> None:
    old = write(tmp_path / "old.csv", "id,v\n-1,x\n-2,y\n")
    done = subprocess.run(_command(old, dsn, mode), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = "".join(f"{i},v{i},c{i},{i % 7}\n" for i in range(TOTAL))
    f = write(tmp_path / "new.csv", "id,v,city,score\n" + rows)
    cmd = _command(f, dsn, mode)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _progress(db, "new.csv") >= CHUNK or proc.poll() is not None,
                 timeout_s=60, what="the first batch")  # fmt: skip
        time.sleep(delay_s)
    finally:
        proc.kill()
        proc.wait(10)
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert db.columns("events") == {"id": "text", "v": "text", "city": "text", "score": "text"}
    assert db.fetch(
        "SELECT column_name, count(*) AS n FROM ingestion_schema_changes "
        "GROUP BY column_name ORDER BY column_name"
    ) == [{"column_name": "city", "n": 1}, {"column_name": "score", "n": 1}]
    assert db.val("SELECT count(*) FROM events") == TOTAL + 2
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL + 2
    assert db.val("SELECT count(*) FROM events WHERE city = 'c' || id") == TOTAL
    assert db.val("SELECT count(*) FROM events WHERE city IS NULL") == 2  # the old rows
