"""The manifest is the truth: shared instance ids, a manifest dropped or a row deleted under a
running daemon, a file truncated while it loads, the same bytes twice, a lock on the target."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.helpers import counts, csv_rows, drop, files_with_status, slow_inserts
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault

APPEND = """
inbox = "inbox"
settle_s = 0.1
lease_s = 2
rescan_s = 0.5
concurrency = 2
chunk_size = {chunk}
[[contracts]]
name = "events"
pattern = "*.csv"
table = "events"
mode = "append"
"""


def _slow_events(db: Db, sleep_s: float) -> None:
    """An append target whose every insert takes `sleep_s`: the test acts between batches."""
    db.execute("CREATE TABLE events (id bigint, v text)")
    slow_inserts(db, "events", sleep_s)


# --- two processes, one instance id -------------------------------------------------------


def test_two_daemons_with_one_instance_id_never_fail_each_others_files(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    files, rows = 201, 40
    _slow_events(db, 0.01)
    config = APPEND.format(chunk=20)
    twins = [Daemon(tmp_path, dsn, config, ("--instance-id", "same")) for _ in range(2)]
    try:
        for d in twins:
            d.wait_ready()
        for d in twins:  # each sees the other at start or at its next lease renewal
            wait_for(lambda d=d: d.events("instance_id_shared"), what="instance_id_shared")
            assert d.metric("ingest_instance_id_shared") == 1
        inbox = tmp_path / "inbox"
        for i in range(files):
            drop(inbox, f"f{i:03}.csv", csv_rows(rows, start=i * rows, value="x"))
        wait_for(
            lambda: files_with_status(db, "success") == files, timeout_s=180, what="every file"
        )
        manifest = db.manifest()
        assert len(manifest) == files and {m["status"] for m in manifest} == {"success"}
        assert all(m["rows"] == rows and m["owner"] == "same" for m in manifest)
        assert len({m["owner_token"] for m in manifest}) == 2  # both loaded, told apart
        assert counts(db, "events") == (files * rows, files * rows)
        loaded = 0.0
        for d in twins:
            assert d.metric("ingest_files_processed_total", file_type="csv", status="failed") == 0
            loaded += d.metric("ingest_files_processed_total", file_type="csv", status="success")
            assert not d.events("file_handed_over") and not d.events("offer_failed")
            [warning] = d.events("instance_id_shared")  # once, not at every renewal
            assert warning["level"] == "WARNING" and "own --instance-id" in warning["error"]
        assert loaded == files
        books = check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")
        assert not books.inbox and len(books.done) == files
    finally:
        codes = [d.stop() for d in twins]
    assert codes == [0, 0]


# --- the manifest or a row of it disappears under a running daemon ------------------------


def _loading_daemon(db: Db, dsn: str, tmp_path: Path, rows: int) -> tuple[Daemon, Path]:
    _slow_events(db, 0.1)
    d = Daemon(tmp_path, dsn, APPEND.format(chunk=100))
    d.wait_ready()
    drop(tmp_path / "inbox", "big.csv", csv_rows(rows, start=0, value="x"))
    wait_for(lambda: db.progress() >= 300, what="a few batches")
    return d, tmp_path / "inbox" / "big.csv"


def test_manifest_dropped_under_a_daemon_stops_loading_and_a_restart_refuses(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    d, big = _loading_daemon(db, dsn, tmp_path, 3000)
    try:
        db.execute("DROP TABLE ingestion_manifest")
        wait_for(lambda: d.get("/readyz")[0] == 503, what="not ready")
        [error] = wait_for(lambda: d.events("manifest_missing"), what="manifest_missing")
        assert error["level"] == "ERROR" and "restore it from a backup" in error["error"]
        assert d.metric("ingest_manifest_missing") == 1
        committed = counts(db, "events")
        drop(tmp_path / "inbox", "later.csv", csv_rows(10, start=10_000, value="x"))
        time.sleep(2)  # a few rescans: none may load, recreate the manifest or log per file
        assert d.proc.poll() is None and d.get("/readyz")[0] == 503
        assert db.val("SELECT to_regclass('ingestion_manifest')") is None
        assert counts(db, "events") == committed and committed[0] == committed[1]
        assert not d.events("offer_failed") and len(d.events("manifest_missing")) == 1
        assert "Traceback" not in d.logs_text()
    finally:
        assert d.stop() == 0
    assert big.exists() and (tmp_path / "inbox" / "later.csv").exists()
    again = Daemon(tmp_path, dsn, APPEND.format(chunk=100))
    try:
        assert again.proc.wait(30) == 2  # refuses to start on a new, empty manifest
    finally:
        again.stop()
    assert "the manifest was dropped" in again.logs_text()
    assert counts(db, "events") == committed  # nothing loaded twice
    check_books(db, tmp_path / "inbox", tmp_path / "done", tmp_path / "failed")


def test_manifest_row_deleted_under_a_daemon_stops_loading_then_resumes_after_restart(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    total = 3000
    d, big = _loading_daemon(db, dsn, tmp_path, total)
    try:
        db.execute("DELETE FROM ingestion_manifest")
        wait_for(lambda: d.get("/readyz")[0] == 503, what="not ready")
        [error] = wait_for(lambda: d.events("manifest_row_missing"), what="manifest_row_missing")
        assert error["level"] == "ERROR" and "was deleted" in error["error"]
        assert "another instance" not in d.logs_text()
        [m] = wait_for(db.manifest, what="the row recorded again")
        count, distinct = counts(db, "events")
        assert (m["status"], m["rows"]) == ("failed", count) and count == distinct
        assert "recorded again" in m["notes"]
    finally:
        assert d.stop() == 0
    assert big.exists()
    again = Daemon(tmp_path, dsn, APPEND.format(chunk=100))
    try:
        again.wait_ready()
        wait_for(
            lambda: files_with_status(db, "success") == 1, timeout_s=60, what="the file finished"
        )
        assert again.events("file_resumed")
    finally:
        assert again.stop() == 0
    assert counts(db, "events") == (total, total)
    check_books(db, tmp_path / "inbox", tmp_path / "done", tmp_path / "failed", table="events")


# --- a file truncated while it loads ----------------------------------------------------


def _once(inbox: Path, dsn: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingestd", "--once", "--inbox", str(inbox), "--dsn", dsn,
         "--table", "events", "--mode", "append", "--chunk-size", "100",
         "--metrics-addr", "off", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_truncated_file_is_refused_on_top_of_its_committed_rows(
    dsn: str, db: Db, tmp_path: Path, suffix: str
) -> None:
    _slow_events(db, 0.05)
    inbox = tmp_path / "inbox"
    rows = 4000
    text = csv_rows(rows, start=0, value="x")
    f = inbox / f"data{suffix}"

    def encode(data: bytes) -> bytes:
        return gzip.compress(data) if suffix.endswith(".gz") else data

    f.parent.mkdir(parents=True)
    f.write_bytes(encode(text.encode()))
    proc = _once(inbox, dsn)
    wait_for(lambda: db.progress() >= 200, what="a few batches")
    cut = text[: len(text) // 2]
    cut = cut[: cut.rindex("\n") - 1]  # the last line cut off mid-number
    f.write_bytes(encode(cut.encode()))
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    [first] = db.manifest()
    committed = first["rows"]
    assert first["status"] == "failed" and committed > 0
    assert counts(db, "events") == (committed, committed)
    # The summary counts what was committed, also for a file that failed.
    assert f"; {committed:,} rows in" in out and f"({committed:,} rows committed)" in out

    second = _once(inbox, dsn)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1, err[-2000:]
    refused = db.manifest()[1]
    assert refused["status"] == "failed" and refused["rows"] == 0
    notes = refused["notes"]
    assert f"committed {committed:,} rows to events" in notes
    assert f"SET status = 'superseded' WHERE id IN ({first['id']})" in notes
    assert counts(db, "events") == (committed, committed)  # nothing appended on top
    assert (tmp_path / "failed" / f.name).exists() and not f.exists()
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")

    # The clean-up the message names, then the file loads.
    db.execute("DELETE FROM events")
    db.execute(f"UPDATE ingestion_manifest SET status = 'superseded' WHERE id = {first['id']}")
    os.rename(tmp_path / "failed" / f.name, f)
    (tmp_path / "failed" / f"{f.name}.error.json").unlink()
    third = _once(inbox, dsn)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err[-2000:]
    assert counts(db, "events")[0] == counts(db, "events")[1] == cut.count("\n")


# --- the same bytes twice ------------------------------------------------------------------


def test_same_bytes_under_two_names_load_once_in_append_mode(
    cli: object, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    text = csv_rows(500, start=0, value="x")
    write(inbox / "a.csv", text)
    write(inbox / "b.csv", text)
    result = cli("--once", "--inbox", inbox, "--table", "events", "--mode", "append")  # type: ignore[operator]
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM events") == 500
    loaded, skipped = sorted(db.manifest(), key=lambda m: m["status"] != "success")
    assert (loaded["status"], skipped["status"]) == ("success", "skipped")
    assert loaded["id"] < skipped["id"]
    assert f"same bytes as {loaded['filename']} (manifest id {loaded['id']}" in skipped["notes"]
    assert '"event": "duplicate_content"' in result.err
    assert "1 loaded, 1 skipped, 0 failed" in result.out
    books = check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")
    assert len(books.done) == 2 and not books.inbox

    # Asked for: the same bytes load again.
    write(inbox / "c.csv", text)
    result = cli("--once", "--inbox", inbox, "--table", "events", "--mode", "append",  # type: ignore[operator]
                 "--on-duplicate-content", "load")  # fmt: skip
    assert result.code == 0 and db.val("SELECT count(*) FROM events") == 1000


def test_a_copy_of_bytes_whose_load_failed_midway_is_refused_not_skipped(
    cli: object, db: Db, tmp_path: Path
) -> None:
    # a.csv fails at row 25 after its first batches committed; b.csv holds the same bytes.
    # Skipping b would lose the rows after 20; loading it would put rows 1-20 in twice.
    inbox = tmp_path / "inbox"
    text = "id,v\n" + "".join(f"{i},{i}\n" for i in range(1, 25)) + "25,x\n"
    args = ["--once", "--inbox", inbox, "--table", "events", "--mode", "append",
            "--types", "v:integer", "--chunk-size", "10"]  # fmt: skip
    write(inbox / "a.csv", text)
    assert cli(*args).code == 1  # type: ignore[operator]
    committed = db.val("SELECT count(*) FROM events")
    assert 0 < committed < 25 and db.manifest()[0]["rows"] == committed
    write(inbox / "b.csv", text)
    result = cli(*args)  # type: ignore[operator]
    assert result.code == 1
    copy = db.manifest()[-1]
    assert copy["filename"] == "b.csv" and copy["status"] == "failed"
    assert (
        f"same bytes as a.csv (manifest id 1) failed after committing {committed} rows"
        in (copy["notes"])
    )
    assert "Drop it into the inbox as a.csv" in copy["notes"]
    assert db.val("SELECT count(*) FROM events") == committed
    assert (tmp_path / "failed" / "b.csv").exists()
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")


def test_same_file_for_another_table_loads_there_too(cli: object, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "f.csv", csv_rows(30, start=0, value="x"))
    for table in ("first", "second"):
        result = cli("--files", f, "--table", table, "--mode", "append")  # type: ignore[operator]
        assert result.code == 0, result.err
        assert "1 loaded" in result.out
        assert db.val(f'SELECT count(*) FROM "{table}"') == 30
    rows = db.manifest()
    assert [(m["table_name"], m["status"]) for m in rows] == [
        ("first", "success"),
        ("second", "success"),
    ]
    again = cli("--files", f, "--table", "second", "--mode", "append")  # type: ignore[operator]
    assert "0 loaded, 1 skipped" in again.out and db.val('SELECT count(*) FROM "second"') == 30


# --- a lock held on the target ----------------------------------------------------------


@contextmanager
def _locked(dsn: str, table: str) -> Iterator[int]:
    """Hold ACCESS EXCLUSIVE on `table` from another session; yields that session's pid."""
    started, release = threading.Event(), threading.Event()
    pid: list[int] = []

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
                pid.append(int(await conn.fetchval("SELECT pg_backend_pid()")))
                started.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(hold()), daemon=True)
    thread.start()
    assert started.wait(20), "could not take the lock"
    try:
        yield pid[0]
    finally:
        release.set()
        thread.join(20)


def test_lock_held_on_the_target_waits_lock_timeout_and_says_who(
    cli: object, dsn: str, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE events (id bigint, v text)")
    inbox = tmp_path / "inbox"
    write(inbox / "n.csv", csv_rows(50, start=0, value="x"))
    args = ["--once", "--inbox", inbox, "--table", "events", "--mode", "append"]
    with _locked(dsn, "events") as pid:
        result = cli(*args, "--lock-timeout-s", "0.3", "--max-retries", "1")  # type: ignore[operator]
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "retrying"  # not final: the file stays and loads later
    notes = m["notes"]
    assert notes.startswith("gave up after 2 attempts: waited 0.3 s (lock_timeout_s) for a lock")
    assert f"on table events held by another session (pid {pid}, AccessExclusiveLock" in notes
    assert "transient; will retry" not in notes and "stays in the inbox" in notes
    assert (inbox / "n.csv").exists()
    assert '"event": "file_retry"' in result.err and "statement timeout" not in result.err

    result = cli(*args)  # type: ignore[operator]
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM events") == db.val("SELECT count(DISTINCT id) FROM events")
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", 50)
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")


# --- what the log says -------------------------------------------------------------------


def test_reload_failure_and_interruption_are_logged_with_context(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    _slow_events(db, 0.1)
    d = Daemon(tmp_path, dsn, APPEND.format(chunk=100))
    try:
        d.wait_ready()
        d.config.write_text("this is [not toml")
        d.signal(signal.SIGHUP)
        [bad] = wait_for(lambda: d.events("config_reload_failed"), what="config_reload_failed")
        assert bad["run_id"] and bad["instance_id"]
        drop(tmp_path / "inbox", "big.csv", csv_rows(3000, start=0, value="x"))
        wait_for(lambda: db.progress() >= 200, what="a few batches")
    finally:
        assert d.stop() == 0
    [line] = d.events("file_interrupted")
    assert line["level"] == "INFO" and line["rows_committed"] >= 200
    errors = [e["event"] for e in d.events() if e["level"] == "ERROR"]
    assert errors == ["config_reload_failed"]  # the interruption is not one


def test_truncated_gz_counts_its_committed_rows_and_the_complete_file_is_refused(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE events (id bigint, v text)")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    whole = gzip.compress(csv_rows(2_000_000, start=0, value="x").encode(), compresslevel=1)
    f = inbox / "big.csv.gz"
    f.write_bytes(whole[: len(whole) * 6 // 10])  # cut mid-stream, as an upload that died
    first = _once(inbox, dsn, "--chunk-size", "100000")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1, err[-2000:]
    [m] = db.manifest()
    committed = m["rows"]
    assert m["status"] == "failed" and committed > 0
    assert counts(db, "events") == (committed, committed)
    assert f"; {committed:,} rows in" in out and f"({committed:,} rows committed)" in out
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")

    f.write_bytes(whole)  # the complete upload, under the same name
    second = _once(inbox, dsn, "--chunk-size", "100000")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 1
    assert f"committed {committed:,} rows to events" in out
    assert counts(db, "events") == (committed, committed)  # not appended on top
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")


def test_manifest_dropped_under_an_idle_daemon_is_noticed(dsn: str, db: Db, tmp_path: Path) -> None:
    d = Daemon(tmp_path, dsn, APPEND.format(chunk=100))
    try:
        d.wait_ready()
        db.execute("DROP TABLE ingestion_manifest")
        wait_for(lambda: d.get("/readyz")[0] == 503, what="not ready without a file in hand")
        assert d.events("manifest_missing") and d.metric("ingest_manifest_missing") == 1
        drop(tmp_path / "inbox", "x.csv", csv_rows(5, start=0, value="x"))
        time.sleep(1.5)  # a few rescans: nothing may be claimed, nothing recreated
        assert db.val("SELECT to_regclass('ingestion_manifest')") is None
    finally:
        assert d.stop() == 0
    assert (tmp_path / "inbox" / "x.csv").exists()


def test_manifest_dropped_under_a_once_run_ends_it_with_exit_1(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    _slow_events(db, 0.1)
    inbox = tmp_path / "inbox"
    write(inbox / "big.csv", csv_rows(3000, start=0, value="x"))
    proc = _once(inbox, dsn)
    wait_for(lambda: db.progress() >= 300, what="a few batches")
    db.execute("DROP TABLE ingestion_manifest")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert '"event": "manifest_missing"' in err and "Traceback" not in err
    assert "1 interrupted" in out and (inbox / "big.csv").exists()
    count, distinct = counts(db, "events")
    assert count == distinct and 300 <= count < 3000


# --- two deployments, one rejects table ---------------------------------------------------


def test_a_second_manifest_beside_the_rejects_table_starts_and_its_drop_is_still_seen(
    cli: object, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(5, start=0, value="x"))
    args = ["--once", "--files", inbox / "a.csv", "--table", "events", "--mode", "append"]
    assert cli(*args).code == 0  # type: ignore[operator]
    # A 0.1.0 rejects table carried no list: it stands for the default manifest.
    db.execute("COMMENT ON TABLE ingestion_rejects IS NULL")

    other = cli(*args, "--manifest-table", "brand_new", "--table", "events2")  # type: ignore[operator]
    assert other.code == 0, other.err
    assert db.val("SELECT count(*) FROM events2") == 5
    assert db.val("SELECT obj_description('ingestion_rejects'::regclass, 'pg_class')") == (
        "ingestd manifests: ingestion_manifest,brand_new"
    )

    db.execute("DROP TABLE brand_new")
    refused = cli(*args, "--manifest-table", "brand_new", "--table", "events2")  # type: ignore[operator]
    assert refused.code == 2 and "the manifest was dropped" in refused.err
    assert "DROP TABLE" not in refused.err  # the rejects table also serves ingestion_manifest
    assert (
        "COMMENT ON TABLE \"ingestion_rejects\" IS 'ingestd manifests: ingestion_manifest'"
    ) in refused.err
    assert db.val("SELECT to_regclass('brand_new')") is None
    assert db.val("SELECT count(*) FROM events2") == 5  # nothing loaded again

    db.execute("DROP TABLE ingestion_manifest")
    alone = cli(*args)  # type: ignore[operator]
    assert alone.code == 2 and "the manifest was dropped" in alone.err
    assert 'DROP TABLE "ingestion_rejects"' not in alone.err  # brand_new is listed yet
    db.execute("COMMENT ON TABLE ingestion_rejects IS 'ingestd manifests: ingestion_manifest'")
    alone = cli(*args)  # type: ignore[operator]
    assert alone.code == 2 and 'DROP TABLE "ingestion_rejects"' in alone.err


def test_lock_held_on_the_manifest_names_it_and_who_and_is_no_outage(
    cli: object, dsn: str, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(5, start=0, value="x"))
    args = ["--once", "--inbox", inbox, "--table", "events", "--mode", "append"]
    assert cli(*args).code == 0  # type: ignore[operator]
    write(inbox / "b.csv", csv_rows(5, start=10, value="x"))
    with _locked(dsn, "ingestion_manifest") as pid:
        result = cli(*args, "--lock-timeout-s", "0.3", "--max-retries", "1")  # type: ignore[operator]
    assert result.code == 1, result.err
    assert "unreachable" not in result.err and "database_unavailable" not in result.err
    [line] = [x for x in result.err.splitlines() if x.startswith("ingestd: error:")]
    assert line.startswith("ingestd: error: gave up after 2 attempts: waited 0.3 s")
    assert f"on table ingestion_manifest held by another session (pid {pid}, " in line
    assert "AccessExclusiveLock" in line and "still in place for the next run" in line
    assert '"event": "manifest_locked"' in result.err and "Traceback" not in result.err
    assert (inbox / "b.csv").exists() and db.val("SELECT count(*) FROM events") == 5

    again = cli(*args)  # type: ignore[operator]
    assert again.code == 0, again.err
    assert db.val("SELECT count(*) FROM events") == 10
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="events")


# --- what the summary counts --------------------------------------------------------------


def test_summary_counts_a_retrying_file_and_only_the_rows_this_run_committed(
    cli: object, dsn: str, db: Db, tmp_path: Path
) -> None:
    _slow_events(db, 0.05)
    inbox = tmp_path / "inbox"
    write(inbox / "big.csv", csv_rows(3000, start=0, value="x"))
    proc = _once(inbox, dsn)
    wait_for(lambda: db.progress() >= 300, what="a few batches")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]  # a stopped backfill did not complete
    assert "1 interrupted" in out
    [m] = db.manifest()
    before = int(m["rows"])
    assert 300 <= before < 3000

    db.execute("DROP TRIGGER slow ON events")
    args = ["--once", "--inbox", inbox, "--table", "events", "--mode", "append"]
    resumed = cli(*args, "--chunk-size", "100")  # type: ignore[operator]
    assert resumed.code == 0, resumed.err
    assert counts(db, "events") == (3000, 3000)
    head = resumed.out.splitlines()[0]
    assert f": 1 loaded, 0 skipped, 0 failed; {3000 - before:,} rows in " in head
    assert f"(3,000 rows, {3000 - before:,} of them this run)" in resumed.out

    write(inbox / "n.csv", csv_rows(50, start=5000, value="x"))
    with _locked(dsn, "events"):
        result = cli(*args, "--lock-timeout-s", "0.3", "--max-retries", "0")  # type: ignore[operator]
    assert result.code == 1
    assert ": 0 loaded, 0 skipped, 0 failed, 1 retrying; 0 rows in " in result.out
    assert "  retrying n.csv -> events: gave up after 1 attempts" in result.out
    assert (inbox / "n.csv").exists()
