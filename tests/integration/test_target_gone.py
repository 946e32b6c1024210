"""A target dropped or renamed under a running daemon: the next good file is not blamed.
Each worker's session checks a target once; a table gone since is checked again (and made
again, as for a first file), and the file loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for
from tests.helpers import drop
from tests.pg import Db

CONFIG = """
inbox = "inbox"
settle_s = 0.2
rescan_s = 1
concurrency = 1
retry_base_s = 0.2

[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""


@pytest.mark.parametrize(
    "change", ["DROP TABLE t", "ALTER TABLE t RENAME TO t_old"], ids=["dropped", "renamed"]
)
def test_a_target_gone_under_the_daemon_is_made_again_for_the_next_file(
    dsn: str, db: Db, tmp_path: Path, change: str
) -> None:
    daemon = Daemon(tmp_path, dsn, CONFIG)
    try:
        daemon.wait_ready()
        drop(tmp_path / "inbox", "f1.csv", "id,v\n1,a\n2,b\n")
        wait_for(lambda: db.val("SELECT count(*) FROM ingestion_manifest WHERE status = "
                                "'success'") == 1, what="the first file")  # fmt: skip
        db.execute(change)
        drop(tmp_path / "inbox", "f2.csv", "id,v\n3,c\n")
        wait_for(lambda: db.val("SELECT count(*) FROM ingestion_manifest WHERE status = "
                                "'success'") == 2, what="the second file")  # fmt: skip
        assert db.fetch("SELECT id, v FROM t ORDER BY id") == [{"id": "3", "v": "c"}]
        assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())
        assert daemon.metric("ingest_internal_errors_total") == 0
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    events = [e for e in daemon.events("file_retry")] + daemon.events("file_finished")
    assert any("is gone since this session checked it" in str(e) for e in events), events
