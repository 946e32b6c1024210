"""Object-store inboxes against hostile names and writers (SeaweedFS on loopback): keys
with spaces, quotes, non-ASCII and a leading dash, a key near S3's 1,024-byte limit that
fails (its sidecar still fits), an object replaced while it loads."""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.daemon import wait_for
from tests.helpers import csv_rows, slow_inserts
from tests.pg import Db
from tests.s3server import Bucket

INBOX = "landing/inbox/"


def once(cli: Any, bucket: Bucket, *args: str) -> Any:
    return cli("--once", "--inbox", bucket.url(INBOX), "--table", "t", "--mode", "append",
               *args)  # fmt: skip


def test_keys_with_spaces_quotes_unicode_and_a_leading_dash_load_under_their_names(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    names = ["with space.csv", "quote'\"s.csv", "Razão Social/ação.csv", "-dash.csv",
             "UPPER.csv", "upper.csv"]  # fmt: skip
    for i, name in enumerate(names):
        bucket.put(INBOX + name, csv_rows(2, 10 * i))
    result = once(cli, bucket)
    assert result.code == 0, result.err
    assert sorted(m["filename"] for m in db.manifest()) == sorted(names)
    assert db.val("SELECT count(DISTINCT id) FROM t") == 2 * len(names)
    day = bucket.keys("landing/done/")
    assert sorted(k.split("/", 3)[3] for k in day) == sorted(names)


def test_a_bad_object_with_a_key_near_the_limit_fails_with_a_sidecar_that_fits(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    # 1,024 bytes in all (S3's limit), in parts of at most 200 (SeaweedFS stores parts as
    # file names); failed/ is one byte longer than inbox/ and the sidecar 11 more.
    head = "/".join(["p" * 199] * 4) + "/"
    name = head + "x" * (1024 - len(INBOX) - len(head) - len(".parquet")) + ".parquet"
    assert len((INBOX + name).encode()) == 1024
    bucket.put(INBOX + name, b"not parquet")
    result = once(cli, bucket)
    assert result.code != 0
    failed = bucket.keys("landing/failed/")
    assert len(failed) == 2, failed
    data, sidecar = sorted(failed, key=len)
    assert sidecar == data + ".error.json" and len(sidecar.encode()) <= 1024
    assert data.endswith(".parquet")
    assert bucket.get(data) == b"not parquet"
    assert json.loads(bucket.get(sidecar))
    assert bucket.keys(INBOX) == []


def test_an_object_replaced_while_it_loads_fails_that_version_and_loads_the_new_one(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    """As for a file rewritten mid-load (README bad-input table): the version being read is
    abandoned as changed, never read torn (the GETs are pinned to its ETag); the new one
    loads (upsert: by key, on top of what the old one committed)."""
    db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    slow_inserts(db, "t", 0.05)
    bucket.put(INBOX + "r.csv", csv_rows(20_000, 0, "old"))

    def replace() -> None:
        wait_for(lambda: db.progress() >= 3_000, timeout_s=60, what="the first batches")
        bucket.put(INBOX + "r.csv", csv_rows(500, 100_000, "new"))

    writer = threading.Thread(target=replace)
    writer.start()
    args = ("--once", "--inbox", bucket.url(INBOX), "--table", "t", "--mode", "upsert",
            "--pk", "id", "--chunk-size", "1000")  # fmt: skip
    first = cli(*args)
    writer.join()
    assert "Traceback" not in first.err
    assert "changed while it was being loaded" in first.err, first.err[-3000:]
    assert "its ETag changed" in first.err and "size or mtime" not in first.err
    again = cli(*args)  # the new version, if the first run did not see it yet
    assert again.code == 0, again.err
    assert db.val("SELECT count(*) FROM t WHERE v = 'new'") == 500
    old = db.val("SELECT count(*) FROM t WHERE v = 'old'")
    assert 0 < old < 20_000 and db.val("SELECT count(DISTINCT id) FROM t") == old + 500
    statuses = sorted(m["status"] for m in db.manifest())
    assert statuses == ["failed", "success"], statuses
    assert bucket.keys("landing/failed/") == []
    assert bucket.keys(INBOX) == []


def test_an_object_deleted_while_it_loads_is_not_blamed(cli: Any, db: Db, bucket: Bucket) -> None:
    db.execute("CREATE TABLE t (id bigint, v text)")
    slow_inserts(db, "t", 0.05)
    bucket.put(INBOX + "gone.csv", csv_rows(20_000, 0, "old"))

    def delete() -> None:
        wait_for(lambda: db.progress() >= 3_000, timeout_s=60, what="the first batches")
        bucket.delete(INBOX + "gone.csv")

    remover = threading.Thread(target=delete)
    remover.start()
    result = once(cli, bucket, "--chunk-size", "1000")
    remover.join()
    assert "Traceback" not in result.err and "internal" not in result.err.lower()
    assert "disappeared while it was being loaded" in result.err, result.err[-3000:]
    assert bucket.keys("landing/failed/") == []
    [row] = db.manifest()
    assert row["status"] == "failed" and 0 < row["rows"] < 20_000
