"""A 150 MB object loads in no more memory than the same file from a local folder: it is
streamed (never downloaded whole to memory or disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_with_peak
from tests.pg import Db
from tests.s3server import Bucket

pytestmark = [pytest.mark.fault, pytest.mark.slow]
MB = 1 << 20
ROWS, WIDTH = 150_000, 1_040  # ~150 MB of CSV


def _peak_rss(db: Db, dsn: str, inbox: str, cwd: Path) -> int:
    """Load the inbox with --once; the child's peak RSS in bytes."""
    for table in ("big", "ingestion_manifest", "ingestion_rejects"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    args = [
        "--once", "--inbox", inbox, "--dsn", dsn, "--table", "big", "--mode", "append",
        "--metrics-addr", "off", "--split-mb", "0", "--log-level", "WARNING",
    ]  # fmt: skip
    result, peak = run_with_peak(args, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert db.val("SELECT count(*) FROM big") == ROWS
    assert db.val("SELECT count(DISTINCT id) FROM big") == ROWS
    return peak


def test_a_150_mb_object_loads_in_the_memory_of_a_local_file(
    dsn: str, db: Db, bucket: Bucket, tmp_path: Path
) -> None:
    pad = "x" * WIDTH
    body = "id,payload\n" + "".join(f"{i},{pad}\n" for i in range(ROWS))
    assert len(body) > 150 * 1_000_000
    bucket.put("in/big.csv", body)
    local = tmp_path / "inbox"
    local.mkdir()
    (local / "big.csv").write_text(body)
    del body
    from_store = _peak_rss(db, dsn, bucket.url("in/"), tmp_path)
    from_disk = _peak_rss(db, dsn, str(local), tmp_path)
    print(f"\npeak RSS: object {from_store / MB:.0f} MB, local file {from_disk / MB:.0f} MB")
    # A whole download would add the object's 150 MB (and more for its copies); a batch
    # kept as the read-ahead too added 55 MB (each batch here is about 52 MB). What is left
    # is the client's copy of the batch being read, about one batch.
    assert from_store < from_disk + 80 * MB
