"""done/ and failed/ full, read-only or immutable, and names too long for a suffix: a move
that cannot complete leaves no partial copy, never reloads the file, is retried with
backoff and is counted, logged and alerted on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ingestd import archive
from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, drop, log_events
from tests.invariants import check_books
from tests.mounts import immutable, read_only_bind, remount, remount_bind, set_immutable, tmpfs
from tests.pg import Db

pytestmark = pytest.mark.fault

CONFIG = """
inbox = "inbox"
settle_s = 0.2
rescan_s = 0.5
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""
BIG_ROWS = 50_000
PADDED = "v{:012}"  # each row the same length
LONG = "x" * 251 + ".csv"  # 255 bytes: room for neither ".error.json" nor ".1"


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def no_traceback(daemon: Daemon) -> None:
    text = daemon.logs_text()
    assert "Traceback" not in text and "exc_info" not in text, text[-3000:]


def one_line_failures(events: list[dict[str, object]], folder: str, reason: str, file: str) -> None:
    assert events, "no archive_failed line"
    for event in events:
        # The retries too, not only the first attempt (logged by the worker) name the file.
        assert (event["folder"], event["reason"], event.get("file")) == (folder, reason, file)
        assert f"cannot move the file to {folder}/" in str(event["error"])
        assert "\n" not in str(event["error"])


def test_a_full_done_volume_keeps_no_partial_copy_and_never_reloads(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    text = csv_rows(BIG_ROWS, start=0, value=PADDED)
    assert len(text) > 900_000  # far more than the volume holds
    with tmpfs(done, "64k"):
        daemon = Daemon(tmp_path, dsn, CONFIG)
        try:
            daemon.wait_ready()
            big = drop(inbox, "big.csv", text)
            errors = {"folder": "done", "reason": "no_space"}
            wait_for(lambda: daemon.metric("ingest_archive_errors_total", **errors) >= 2,
                     timeout_s=60, what="a failed move and its first retry")  # fmt: skip
            time.sleep(1.5)  # three rescans: none may reload or copy again

            [m] = db.manifest()
            assert (m["status"], m["rows"], m["attempts"]) == ("success", BIG_ROWS, 1)
            assert db.val("SELECT count(*) FROM t") == BIG_ROWS
            assert db.val("SELECT count(DISTINCT id) FROM t") == BIG_ROWS
            assert files_under(done) == []  # no truncated copy, no big.1.csv, no temp
            assert big.read_text() == text
            success = {"file_type": "csv", "status": "success"}
            assert daemon.metric("ingest_files_processed_total", **success) == 1
            skipped = {"file_type": "csv", "status": "skipped"}
            assert daemon.metric("ingest_files_processed_total", **skipped) == 0
            assert daemon.metric("ingest_archive_pending_files") == 1
            assert daemon.metric("ingest_oldest_waiting_file_age_seconds") == 0
            one_line_failures(daemon.events("archive_failed"), "done", "no_space", "big.csv")
            tries = [int(e["attempt"]) for e in daemon.events("archive_failed")]
            assert tries == list(range(1, len(tries) + 1))  # backoff: not once per rescan
            assert len(tries) <= 4

            remount(done, "size=4m")  # the operator frees space
            wait_for(lambda: not big.exists(), timeout_s=30, what="the retried move")
            assert files_under(done) == [f"{time.strftime('%Y-%m-%d')}/big.csv"]
            assert daemon.metric("ingest_archive_pending_files") == 0
            archived = daemon.events("file_archived")
            assert [(e["attempts"], e.get("file")) for e in archived] == [
                (len(tries) + 1, "big.csv")
            ]
            [m] = db.manifest()
            assert (m["status"], m["attempts"]) == ("success", 1)
            no_traceback(daemon)
            assert daemon.stop() == 0
            check_books(db, inbox, done, failed, "t")
        finally:
            daemon.kill()


def test_a_manifest_row_deleted_while_the_move_waits_is_noticed_and_recorded_again(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    """done/ full, then the file's success row deleted: it went unnoticed (ready, and a
    restart loaded the file again). Now the next retry notices it as the workers do: one
    ERROR line, not ready, the row recorded again as success with its rows."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    text = csv_rows(BIG_ROWS, start=0, value=PADDED)
    with tmpfs(done, "64k"):
        daemon = Daemon(tmp_path, dsn, CONFIG)
        try:
            daemon.wait_ready()
            big = drop(inbox, "big.csv", text)
            wait_for(lambda: daemon.events("archive_failed"), timeout_s=60, what="a failed move")
            [m] = db.manifest()
            assert m["status"] == "success"
            db.execute(f"DELETE FROM ingestion_manifest WHERE id = {int(m['id'])}")
            missing = wait_for(lambda: daemon.events("manifest_row_missing"), timeout_s=60,
                               what="the deleted row noticed")  # fmt: skip
            assert len(missing) == 1 and missing[0]["level"] == "ERROR", missing
            assert f"manifest row {m['id']} " in missing[0]["error"]
            assert daemon.get("/readyz")[0] == 503
            assert daemon.metric("ingest_manifest_missing") == 1
            [again] = db.manifest()
            assert (again["filename"], again["status"], again["rows"]) == (
                "big.csv",
                "success",
                BIG_ROWS,
            )
            assert again["checksum"] == m["checksum"] and again["id"] != m["id"]
            assert db.val("SELECT count(DISTINCT id) FROM t") == BIG_ROWS
            assert big.exists()  # still waiting for its move; nothing loaded twice
            no_traceback(daemon)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    # A restart finds its row: the file is not loaded a second time.
    daemon = Daemon(tmp_path, dsn, CONFIG)
    try:
        daemon.wait_ready()
        wait_for(lambda: not big.exists(), timeout_s=30, what="the move, done/ roomy again")
        [after] = db.manifest()
        assert (after["status"], after["rows"]) == ("success", BIG_ROWS)
        assert db.val("SELECT count(*) FROM t") == BIG_ROWS
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    check_books(db, inbox, done, failed, "t")


def test_a_read_only_failed_folder_keeps_the_failed_file_without_reloading_it(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    with read_only_bind(failed):
        daemon = Daemon(tmp_path, dsn, CONFIG)
        try:
            daemon.wait_ready()
            bad = drop(inbox, "bad.csv", "v\nno key column\n")
            drop(inbox, "good.csv", csv_rows(5, start=0, value=PADDED))
            errors = {"folder": "failed", "reason": "read_only"}
            wait_for(lambda: daemon.metric("ingest_archive_errors_total", **errors) >= 2,
                     timeout_s=60, what="a failed move and its first retry")  # fmt: skip
            wait_for(lambda: not (inbox / "good.csv").exists(), what="the good file moved")
            time.sleep(1.5)

            by_name = {m["filename"]: m for m in db.manifest()}
            assert set(by_name) == {"bad.csv", "good.csv"}
            assert (by_name["bad.csv"]["status"], by_name["bad.csv"]["attempts"]) == ("failed", 1)
            assert by_name["good.csv"]["status"] == "success"
            assert db.val("SELECT count(DISTINCT id) FROM t") == 5
            failed_count = {"file_type": "csv", "status": "failed"}
            assert daemon.metric("ingest_files_processed_total", **failed_count) == 1
            assert daemon.metric("ingest_archive_pending_files") == 1
            assert bad.exists() and files_under(failed) == []
            assert not list(tmp_path.rglob("*.error.json"))
            one_line_failures(daemon.events("archive_failed"), "failed", "read_only", "bad.csv")

            remount_bind(failed, "rw")
            wait_for(lambda: not bad.exists(), timeout_s=30, what="the retried move")
            assert files_under(failed) == ["bad.csv", "bad.csv.error.json"]
            report = json.loads((failed / "bad.csv.error.json").read_text())
            assert report["file"] == "bad.csv" and "id" in report["reason"]
            assert daemon.metric("ingest_archive_pending_files") == 0
            archived = daemon.events("file_archived")
            assert [e.get("file") for e in archived if e["folder"] == "failed"] == ["bad.csv"]
            no_traceback(daemon)
            assert daemon.stop() == 0
            check_books(db, inbox, done, failed, "t")
        finally:
            daemon.kill()


def test_an_immutable_done_folder_under_once_runs(cli, db: Db, tmp_path: Path) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    f = write(inbox / "a.csv", csv_rows(20, start=0, value=PADDED))
    args = ("--inbox", inbox, "--table", "t", "--pk", "id")
    with immutable(done):
        for run in range(2):
            result = cli("--once", *args)
            assert result.code == 0, result.err[-2000:]
            failures = log_events(result.err, "archive_failed")
            one_line_failures(failures, "done", "permission", "a.csv")
            assert "Traceback" not in result.err
            assert f.exists() and files_under(done) == []
            [m] = db.manifest()  # the second run skips it: loaded already
            assert (m["status"], m["rows"], m["attempts"]) == ("success", 20, 1), run
            assert db.val("SELECT count(*) FROM t") == 20
        set_immutable(done, False)
        result = cli("--once", *args)
        assert result.code == 0, result.err[-2000:]
        assert not f.exists()
        assert files_under(done) == [f"{time.strftime('%Y-%m-%d')}/a.csv"]
        assert db.val("SELECT count(DISTINCT id) FROM t") == 20
        check_books(db, inbox, done, failed, "t")


def test_255_byte_names_get_their_sidecar_and_their_numbered_second_version(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    good_name = "g" * 251 + ".csv"
    daemon = Daemon(tmp_path, dsn, CONFIG)
    try:
        daemon.wait_ready()
        for version in (1, 2):
            drop(inbox, LONG, f"v\nno key column, version {version}\n")
            drop(inbox, good_name, csv_rows(10 * version, start=0, value=f"r{version}-{{:012}}"))
            wait_for(lambda: not list(inbox.glob("*.csv")), what=f"version {version} moved")
        day = done / time.strftime("%Y-%m-%d")
        assert sorted(p.name for p in day.iterdir()) == sorted(
            [good_name, archive.fit_name(good_name, 1, 0, 255)]
        )
        first = archive.fit_name(LONG, 0, len(archive.SIDECAR_SUFFIX), 255)
        second = archive.fit_name(LONG, 1, len(archive.SIDECAR_SUFFIX), 255)
        assert files_under(failed) == sorted(
            [first, first + ".error.json", second, second + ".error.json"]
        )
        assert all(len(n.encode()) <= 255 for n in files_under(failed))
        reports = [json.loads((failed / (n + ".error.json")).read_text()) for n in (first, second)]
        assert [r["file"] for r in reports] == [LONG, LONG]
        manifest = db.manifest()
        assert sorted((m["filename"], m["status"]) for m in manifest) == sorted(
            [(LONG, "failed"), (LONG, "failed"), (good_name, "success"), (good_name, "success")]
        )
        assert db.val("SELECT count(DISTINCT id) FROM t") == 20
        assert db.val("SELECT count(*) FROM t WHERE v LIKE 'r2-%'") == 20
        assert not daemon.events("archive_failed")
        for folder in archive.FOLDERS:
            for reason in archive.REASONS:
                labels = {"folder": folder, "reason": reason}
                assert daemon.metric("ingest_archive_errors_total", **labels) == 0
        assert daemon.stop() == 0
        check_books(db, inbox, done, failed)
    finally:
        daemon.kill()


def test_check_books_names_every_disagreement(cli, db: Db, tmp_path: Path) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    write(inbox / "a.csv", csv_rows(3, start=0, value=PADDED))
    write(inbox / "bad.csv", "v\nno key column\n")
    assert cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id").code == 1
    check_books(db, inbox, done, failed, "t")  # an honest run agrees

    day = done / time.strftime("%Y-%m-%d")
    (day / "a.1.csv").write_bytes((day / "a.csv").read_bytes())  # archived twice
    (day / "big.csv").write_bytes(b"id,v\n1,trunc")  # a truncated copy: no row
    (failed / "bad.csv.error.json").unlink()  # a failed file without its reason
    (failed / f"{archive.TEMP_PREFIX}1-ab{archive.TEMP_SUFFIX}").write_bytes(b"partial")
    db.execute("INSERT INTO t VALUES ('99', 'not from any file')")
    with pytest.raises(AssertionError) as caught:
        check_books(db, inbox, done, failed, "t")
    text = str(caught.value)
    assert "the same version is in done/ 2 times" in text
    assert "big.csv is in done/ but no success row has its checksum" in text
    assert "bad.csv is in failed/ without its sidecar" in text
    assert "temporary file left by a move" in text
    assert "t has 4 rows; the manifest counts 3 committed" in text
