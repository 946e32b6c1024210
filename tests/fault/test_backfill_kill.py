"""kill -9 of a --backfill run after its drop, during the load and during the rebuild: the
definitions stay recorded, a daemon refuses the table, and the next run finishes with every
index there exactly once, as it was, and every row loaded once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import run_cli, write
from tests.daemon import wait_for
from tests.integration.test_backfill import SCHEMA, data, error_lines, indexdefs, records
from tests.pg import Db

pytestmark = pytest.mark.fault

ROWS = 30_000
SLOW = """
CREATE FUNCTION slow(v text) RETURNS text IMMUTABLE LANGUAGE plpgsql
AS $$ BEGIN PERFORM pg_sleep(0.0003); RETURN v; END $$;
CREATE INDEX t_slow ON t (slow(a));
"""


def _command(f: Path, dsn: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "t", "--pk", "id", "--chunk-size", "500", "--metrics-addr", "off",
        "--log-level", "WARNING", "--backfill", *extra,
    ]  # fmt: skip


def _killed_when(cmd: list[str], ready: object, what: str) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready() or proc.poll() is not None, timeout_s=60, what=what)  # type: ignore[operator]
        assert proc.poll() is None, f"ingestd ended before {what}"
    finally:
        proc.kill()
        proc.wait(10)


def _check_finished(db: Db, before: dict[str, str], rows: int) -> None:
    assert indexdefs(db) == before
    assert db.val("SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = 't'::regclass")
    assert records(db) == []
    assert int(db.val("SELECT count(*) FROM t")) == rows
    assert int(db.val("SELECT count(DISTINCT id) FROM t")) == rows


def _daemon_refuses(dsn: str, inbox: Path) -> None:
    r = run_cli(["--dsn", dsn, "--metrics-addr", "off", "--inbox", str(inbox), "--table", "t",
                 "--pk", "id"])  # fmt: skip
    assert r.code == 2
    [line] = error_lines(r.err)
    assert "is in backfill" in line and "ingestd backfill --finish" in line


def test_kill_during_the_load_then_the_next_run_finishes(dsn: str, db: Db, tmp_path: Path) -> None:
    db.execute(SCHEMA)
    before = indexdefs(db)
    f = write(tmp_path / "in" / "t.csv", data(ROWS))
    cmd = _command(f, dsn)
    _killed_when(cmd, lambda: db.progress() > 0, "the first batches")
    assert set(records(db)) == {"t_a_idx", "t_b_partial", "t_lower_c", "t_b_incl", "t_c_hash"}
    assert set(indexdefs(db)) == {"t_pkey", "t_code_key"}
    _daemon_refuses(dsn, tmp_path / "in")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_finished(db, before, ROWS)


def test_kill_after_the_drop_before_any_row(dsn: str, db: Db, tmp_path: Path) -> None:
    db.execute(SCHEMA)
    before = indexdefs(db)
    first = write(tmp_path / "in" / "first.csv", data(10, start=ROWS + 1))
    assert run_cli(["--dsn", dsn, "--metrics-addr", "off", "--files", str(first),
                    "--table", "t", "--pk", "id"]).code == 0  # fmt: skip

    async def kill_while_claims_wait() -> None:
        # Claims write the manifest: held back by this lock, after the drop.
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE ingestion_manifest IN EXCLUSIVE MODE")
                f = write(tmp_path / "in" / "t.csv", data(ROWS))
                await asyncio.to_thread(
                    _killed_when, _command(f, dsn), lambda: len(records(db)) == 5, "the drop"
                )
        finally:
            await conn.close()

    asyncio.run(kill_while_claims_wait())
    assert db.progress() == 10  # the first file's rows only
    assert set(indexdefs(db)) == {"t_pkey", "t_code_key"}
    _daemon_refuses(dsn, tmp_path / "in")
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.out + r.err
    _check_finished(db, before, 10)


def test_kill_during_the_rebuild_then_the_next_run_finishes(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    db.execute(SLOW)
    before = indexdefs(db)
    rows = 5_000
    f = write(tmp_path / "in" / "t.csv", data(rows))
    cmd = _command(f, dsn, "--backfill-index-jobs", "1")
    building = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX t_slow%' "
        "AND state = 'active'"
    )
    _killed_when(cmd, lambda: int(db.val(building)) > 0, "the rebuild of t_slow")
    # The server ends the killed client's CREATE INDEX on its own; its transaction rolls back.
    wait_for(lambda: int(db.val(building)) == 0, timeout_s=60, what="the build to end")
    assert "t_slow" in records(db)
    assert int(db.val("SELECT count(*) FROM t")) == rows
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    _check_finished(db, before, rows)


def test_sigterm_during_the_rebuild_stops_at_once_and_says_what_to_run(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    db.execute(SLOW)
    before = indexdefs(db)
    f = write(tmp_path / "in" / "t.csv", data(5_000))
    cmd = [*_command(f, dsn, "--backfill-index-jobs", "1"), "--log-level", "INFO"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    building = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX t_slow%' "
        "AND state = 'active'"
    )
    try:
        wait_for(lambda: int(db.val(building)) > 0 or proc.poll() is not None, timeout_s=60,
                 what="the rebuild of t_slow")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)  # the build in hand is cancelled, not waited for
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "backfill: stopped during the rebuild" in out and "ingestd backfill --finish" in out
    assert "t_slow" in records(db)
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.out + r.err
    _check_finished(db, before, 5_000)
