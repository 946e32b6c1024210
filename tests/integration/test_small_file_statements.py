"""What a small file costs the manifest, counted on a real server (issue 14 goal 5): a file
of one batch is claimed by one INSERT and then written once, by its batch's checkpoint,
which also marks it success; the row reads as it always did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import write
from tests.pg import Db

HEADER = "id,name\n"


def _csv(rows: range) -> str:
    return HEADER + "".join(f"{i},n{i}\n" for i in rows)


def test_a_one_batch_file_updates_its_manifest_row_once(tmp_path: Path, cli: Any, db: Db) -> None:
    """n_tup_upd of the manifest counts the UPDATEs that matched a row: one a file (its last
    checkpoint marks it success), not a checkpoint and then a finish. A file of three
    batches checkpoints three times, the last of them finishing it."""
    inbox = tmp_path / "inbox"
    files = 10
    for n in range(files):
        write(inbox / f"f{n:02d}.csv", _csv(range(n * 10, n * 10 + 10)))
    write(inbox / "big.csv", _csv(range(1000, 1250)))
    # A long lease: no renewal round in so short a run (it would update rows too).
    args = ("--once", "--inbox", inbox, "--table", "t", "--pk", "id", "--chunk-size", 100)
    r = cli(*args, "--lease-s", 3600)
    assert r.code == 0, r.err
    assert db.val("SELECT count(DISTINCT id) FROM t") == files * 10 + 250
    # The run's backends have exited, which flushes their counters.
    updates = db.val(
        "SELECT n_tup_ins * 1000 + n_tup_upd FROM pg_stat_user_tables "
        "WHERE relname = 'ingestion_manifest'"
    )
    assert divmod(updates, 1000) == (files + 1, files + 3)
    rows = db.fetch(
        "SELECT filename, status, rows, batches, notes, processed_at >= started_at AS ordered "
        "FROM ingestion_manifest ORDER BY filename"
    )
    assert len(rows) == files + 1
    for row in rows:
        assert row["status"] == "success" and row["notes"] is None and row["ordered"]
    assert (rows[0]["filename"], rows[0]["rows"], rows[0]["batches"]) == ("big.csv", 250, 3)
    assert all((row["rows"], row["batches"]) == (10, 1) for row in rows[1:])
