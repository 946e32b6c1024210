"""The daemon on an object-store inbox (SeaweedFS on loopback): new objects within poll_s,
status and metrics without secrets, and the dry run's listing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, row_count
from tests.pg import Db
from tests.s3server import SECRET_KEY, Bucket

INBOX = "landing/inbox/"
CONFIG = """
inbox = "{inbox}"
poll_s = 0.3
rescan_s = 2
shutdown_grace_s = 20
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
mode = "append"
"""


def test_the_daemon_loads_a_new_object_within_poll_s(
    daemons: Callable[..., Daemon], db: Db, bucket: Bucket
) -> None:
    bucket.put(INBOX + "early.csv", csv_rows(3))
    daemon = daemons(CONFIG.format(inbox=bucket.url(INBOX)))
    wait_for(lambda: row_count(db) == 3, what="an object present at start")
    bucket.put(INBOX + "deep/er/late.csv", csv_rows(4, 10))
    wait_for(lambda: row_count(db) == 7, timeout_s=10, what="an object put later")
    # An object moves by copy, then delete: the copy shows in done/ a moment before the
    # inbox key goes.
    wait_for(lambda: len(bucket.keys("landing/done/")) == 2 and bucket.keys(INBOX) == [],
             what="both moved to done/")  # fmt: skip
    assert bucket.keys(INBOX) == []
    assert daemon.metric("ingest_files_processed_total", file_type="csv", status="success") == 2
    text = daemon.logs_text() + daemon.get("/metrics")[1] + daemon.get("/readyz")[1]
    assert SECRET_KEY not in text
    assert daemon.stop() == 0


def test_status_and_dry_run_never_show_the_secret(
    cli: Any, db: Db, bucket: Bucket, tmp_path: Path
) -> None:
    bucket.put(INBOX + "a/one.csv", csv_rows(2))
    config = tmp_path / "ingestd.toml"
    config.write_text(CONFIG.format(inbox=bucket.url(INBOX)))
    dry = cli("--config", config, "--dry-run")
    assert dry.code == 0, dry.err
    assert "a/one.csv" in dry.out
    assert bucket.keys(INBOX) == [INBOX + "a/one.csv"]  # a dry run moves nothing
    assert cli("--config", config, "--once").code == 0
    status = cli("status", "--config", config)
    assert "one.csv" in status.out or status.code in (0, 1, 2), status.err
    for result in (dry, status):
        assert SECRET_KEY not in result.out + result.err
