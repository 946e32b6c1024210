"""Three instances share one inbox and one database; one is SIGKILLed midway."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.helpers import files_with_status, slow_inserts
from tests.invariants import check_books
from tests.pg import Db

pytestmark = [pytest.mark.fault, pytest.mark.slow]

FILES, ROWS = 300, 1000
CONFIG = """
inbox = "inbox"
settle_s = 0.1
lease_s = 2
rescan_s = 0.5
concurrency = 2
chunk_size = 250
[[contracts]]
name = "events"
pattern = "*.csv"
table = "events"
mode = "append"
"""


def test_three_instances_one_killed_every_file_and_row_exactly_once(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    # Each batch takes a little while, so every instance has files in hand at any moment.
    db.execute("CREATE TABLE events (id bigint, file text)")
    slow_inserts(db, "events", 0.01)
    instances = {
        name: Daemon(tmp_path, dsn, CONFIG, ("--instance-id", name)) for name in ("a", "b", "c")
    }
    try:
        for daemon in instances.values():
            daemon.wait_ready()
        inbox = tmp_path / "inbox"
        for i in range(FILES):
            body = "".join(f"{i * ROWS + j},f{i}\n" for j in range(ROWS))
            tmp = write(inbox / f".f{i:03}.tmp", "id,file\n" + body)
            os.rename(tmp, inbox / f"f{i:03}.csv")
        wait_for(
            lambda: files_with_status(db, "success") >= FILES // 3,
            timeout_s=120,
            what="a third of the files",
        )

        instances["b"].signal(signal.SIGKILL)
        instances["b"].proc.wait(10)
        pending_of_b = "SELECT id FROM ingestion_manifest WHERE owner = 'b' AND status = 'pending'"
        orphans = [r["id"] for r in db.fetch(pending_of_b)]
        assert orphans, "b had no file in hand when it was killed"

        wait_for(
            lambda: files_with_status(db, "success") == FILES, timeout_s=180, what="every file"
        )
        manifest = db.manifest()
        assert len(manifest) == FILES
        assert len({m["filename"] for m in manifest}) == FILES
        assert all(m["rows"] == ROWS for m in manifest)
        assert db.val("SELECT count(*) FROM events") == FILES * ROWS
        assert db.val("SELECT count(DISTINCT id) FROM events") == FILES * ROWS

        shares = {r["owner"]: r["n"] for r in db.fetch(
            "SELECT owner, count(*) AS n FROM ingestion_manifest GROUP BY owner")}  # fmt: skip
        assert set(shares) == {"a", "b", "c"} and all(n > 0 for n in shares.values())
        taken_over = db.fetch(
            "SELECT owner, status, attempts FROM ingestion_manifest WHERE id = ANY($1::bigint[])",
            orphans,
        )
        assert all(r["status"] == "success" and r["owner"] in ("a", "c") for r in taken_over)

        wait_for(lambda: not list(inbox.glob("*.csv")), what="the inbox to empty")
        assert len(list((tmp_path / "done").rglob("*.csv"))) == FILES
        assert not (tmp_path / "failed").exists()
        check_books(db, inbox, tmp_path / "done", tmp_path / "failed", "events")
        print(f"\nshares {shares}; {len(orphans)} file(s) of the killed instance taken over")
        for name in ("a", "c"):
            assert instances[name].stop() == 0
    finally:
        for daemon in instances.values():
            daemon.kill()
