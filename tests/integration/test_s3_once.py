"""Object-store inboxes, --once, against a real S3-compatible server (SeaweedFS on
loopback): nested prefixes, CSV plain and gzipped, Parquet, identical re-uploads, changed
objects, bad objects to failed/ with their sidecars, and one-line errors at start."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import csv_rows
from tests.pg import Db
from tests.s3server import SECRET_KEY, Bucket

INBOX = "landing/inbox/"


def parquet_bytes(ids: range) -> bytes:
    buf = io.BytesIO()
    table = pa.table({"id": pa.array(list(ids), pa.int64()), "v": [f"p{i}" for i in ids]})
    pq.write_table(table, buf, row_group_size=max(1, len(ids) // 3))
    return buf.getvalue()


def once(cli: Any, bucket: Bucket, *args: str) -> Any:
    return cli("--once", "--inbox", bucket.url(INBOX), "--table", "t", "--mode", "append",
               *args)  # fmt: skip


def counts(db: Db) -> tuple[int, int]:
    row = db.fetch("SELECT count(*) AS n, count(DISTINCT id) AS d FROM t")[0]
    return row["n"], row["d"]


def test_once_drains_csv_gzip_and_parquet_objects_in_nested_prefixes(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    bucket.put(INBOX + "a.csv", csv_rows(3, 1))
    bucket.put(INBOX + "x/y/b.csv.gz", gzip.compress(csv_rows(3, 4).encode()))
    bucket.put(INBOX + "x/c.parquet", parquet_bytes(range(7, 13)))
    bucket.put(INBOX + "x/.hidden.csv", csv_rows(1, 100))
    bucket.put(INBOX + "x/d.csv.part", csv_rows(1, 200))
    bucket.put(INBOX + "x/folder/", b"")
    result = once(cli, bucket)
    assert result.code == 0, result.err
    ids = [r["id"] for r in db.fetch("SELECT id::int AS id FROM t ORDER BY 1")]
    assert ids == list(range(1, 13))
    names = sorted(r["filename"] for r in db.manifest())
    assert names == ["a.csv", "x/c.parquet", "x/y/b.csv.gz"]
    day = sorted(k for k in bucket.keys("landing/done/"))
    assert [k.split("/", 3)[3] for k in day] == ["a.csv", "x/c.parquet", "x/y/b.csv.gz"]
    left = bucket.keys(INBOX)
    assert left == [INBOX + "x/.hidden.csv", INBOX + "x/d.csv.part", INBOX + "x/folder"]


def test_checksum_is_the_sha256_of_the_object_bytes(cli: Any, db: Db, bucket: Bucket) -> None:
    import hashlib

    data = csv_rows(5).encode()
    bucket.put(INBOX + "s.csv", data)
    assert once(cli, bucket).code == 0
    (row,) = db.manifest()
    checksum = row["checksum"]
    want = hashlib.sha256(data)
    assert checksum in (want.digest(), want.hexdigest())


def test_identical_reupload_is_skipped_and_a_changed_object_is_a_new_version(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    bucket.put(INBOX + "r.csv", csv_rows(4))
    assert once(cli, bucket).code == 0
    bucket.put(INBOX + "r.csv", csv_rows(4))  # the same bytes again (append mode!)
    result = once(cli, bucket)
    assert result.code == 0, result.err
    assert counts(db) == (4, 4)
    assert bucket.keys(INBOX) == []
    bucket.put(INBOX + "r.csv", csv_rows(2, 5))  # new bytes: a new version, loaded
    assert once(cli, bucket).code == 0
    assert counts(db) == (6, 6)
    statuses = [r["status"] for r in db.manifest()]
    assert statuses.count("success") == 2, statuses


def test_a_bad_object_goes_to_failed_with_its_sidecar(cli: Any, db: Db, bucket: Bucket) -> None:
    bucket.put(INBOX + "good.csv", csv_rows(2))
    bucket.put(INBOX + "sub/bad.parquet", b"this is not parquet")
    result = once(cli, bucket)
    assert result.code != 0
    assert counts(db) == (2, 2)
    assert bucket.keys("landing/failed/") == [
        "landing/failed/sub/bad.parquet",
        "landing/failed/sub/bad.parquet.error.json",
    ]
    report = json.loads(bucket.get("landing/failed/sub/bad.parquet.error.json"))
    assert report["file"] == "sub/bad.parquet" or "sub/bad.parquet" in json.dumps(report)
    assert bucket.get("landing/failed/sub/bad.parquet") == b"this is not parquet"
    assert bucket.keys(INBOX) == []


def test_a_missing_bucket_is_one_line_and_exit_2(cli: Any, bucket: Bucket) -> None:
    result = cli("--once", "--inbox", "s3://no-such-bucket-here/in/", "--table", "t",
                 "--mode", "append")  # fmt: skip
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.startswith("ingestd:")]
    assert len(lines) == 1, result.err
    assert "no-such-bucket-here" in lines[0] and "does not exist" in lines[0]


def test_refused_credentials_are_one_line_exit_2_and_never_show_the_secret(
    cli: Any, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY + "-wrong")
    result = once(cli, bucket)
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.startswith("ingestd:")]
    assert len(lines) == 1, result.err
    assert "access denied" in lines[0]
    assert "Traceback" not in result.err
    assert SECRET_KEY not in result.err + result.out


def test_credentials_from_a_profile_of_the_shared_files(
    cli: Any, db: Db, bucket: Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from tests.s3server import ACCESS_KEY

    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
        f"[loader]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    config = tmp_path / "config"
    config.write_text("[profile loader]\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "loader")
    bucket.put(INBOX + "p.csv", csv_rows(3))
    result = once(cli, bucket)
    assert result.code == 0, result.err
    assert counts(db) == (3, 3)
    assert SECRET_KEY not in result.err + result.out


def test_done_and_failed_inside_the_inbox_prefix_are_never_listed_again(
    cli: Any, db: Db, bucket: Bucket
) -> None:
    bucket.put(INBOX + "a.csv", csv_rows(2))
    bucket.put(INBOX + "bad.parquet", b"nope")
    args = (
        "--done-dir",
        bucket.url(INBOX + "done/"),
        "--failed-dir",
        bucket.url(INBOX + "failed/"),
    )
    assert once(cli, bucket, *args).code == 1
    again = once(cli, bucket, *args)
    assert again.code == 0, again.err
    assert counts(db) == (2, 2)
    assert len(db.manifest()) == 2
    assert sorted(k.rpartition("/")[2] for k in bucket.keys(INBOX)) == [
        "a.csv", "bad.parquet", "bad.parquet.error.json",
    ]  # fmt: skip
