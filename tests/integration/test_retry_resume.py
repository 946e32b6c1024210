"""Transient failures are retried on a new connection; a re-run resumes after the last batch."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write
from tests.helpers import csv_rows
from tests.pg import Db

ROWS = 1000


def _numbers(path: Path, rows: int = ROWS) -> Path:
    return write(path, csv_rows(rows))


def _kill_on_insert(db: Db, table: str, nth: int | str) -> None:
    """The nth INSERT into `table` terminates its own connection, mid-transaction.

    A sequence counts the inserts: sequences are not rolled back, so the fault
    fires once per listed count however the transaction ends.
    """
    db.execute(f"CREATE TABLE {table} (id text, v text)")
    db.execute("CREATE SEQUENCE fault_seq")
    hits = nth if isinstance(nth, str) else str(nth)
    db.execute(
        f"""CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF nextval('fault_seq') IN ({hits}) THEN
            PERFORM pg_terminate_backend(pg_backend_pid());
          END IF;
          RETURN NULL;
        END $$"""
    )
    db.execute(
        f"CREATE TRIGGER fault AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION fault()"
    )


def test_connection_killed_mid_batch_is_retried_without_duplicates(
    cli, db: Db, tmp_path: Path
) -> None:
    _kill_on_insert(db, "events", 3)
    f = _numbers(tmp_path / "n.csv")
    result = cli("--files", f, "--table", "events", "--mode", "append", "--chunk-size", "100",
                 "--max-retries", "3")  # fmt: skip
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM events") == ROWS
    assert db.val("SELECT count(DISTINCT id) FROM events") == ROWS
    [m] = db.manifest()
    assert (m["status"], m["rows"], m["attempts"]) == ("success", ROWS, 2)
    assert '"event": "file_retry"' in result.err


def test_gives_up_after_max_retries_then_resumes_on_next_run(cli, db: Db, tmp_path: Path) -> None:
    # Inserts 3 and 4 die: with --max-retries 1 the run gives up after two attempts.
    _kill_on_insert(db, "events", "3, 4")
    f = _numbers(tmp_path / "n.csv")
    args = ["--files", f, "--table", "events", "--mode", "append", "--chunk-size", "100"]
    first = cli(*args, "--max-retries", "1")
    assert first.code == 1
    [m] = db.manifest()
    # Transient: the file stays for the next run, and the row says so (not a final 'failed').
    assert m["status"] == "retrying" and "gave up after 2 attempts" in m["notes"]
    assert "(transient; will retry)" not in m["notes"] and "stays in the inbox" in m["notes"]
    # Two batches (of about 100 rows: the file goes as raw segments) committed before the fault.
    assert m["batches"] == 2 and 150 <= m["rows"] <= 250
    assert db.val("SELECT count(*) FROM events") == m["rows"]
    committed = m["rows"]

    second = cli(*args)
    assert second.code == 0, second.err
    assert db.val("SELECT count(*) FROM events") == ROWS
    assert db.val("SELECT count(DISTINCT id) FROM events") == ROWS
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", ROWS)
    assert f'"rows_committed": {committed}' in second.err  # file_resumed
    assert '"batch_idx": 2,' in second.err  # numbering goes on after the committed batches


def test_no_resume_reloads_from_the_start(cli, db: Db, tmp_path: Path) -> None:
    f = _numbers(tmp_path / "n.csv", 10)
    args = ["--files", f, "--table", "t", "--mode", "append"]
    assert cli(*args).code == 0
    assert cli(*args).code == 0  # skipped
    assert db.val("SELECT count(*) FROM t") == 10
    assert cli(*args, "--no-resume").code == 0
    assert db.val("SELECT count(*) FROM t") == 20
