"""No file name, folder state or permission stops the daemon or drops a file from the books.

Names are bytes on Linux: a name that is not UTF-8 loads, keeps its bytes on disk and has
an exact, reversible manifest form. A deleted inbox makes the daemon not ready and loud,
and its watcher comes back with the inbox. An unreadable folder is reported, once.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, drop, without_root_powers
from tests.invariants import check_books
from tests.pg import Db

CONFIG = """
inbox = "inbox"
settle_s = 0.2
rescan_s = {rescan_s}
shutdown_grace_s = 20

[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""
# Rescans so rare that a file loading within the test's deadline was found by the watcher.
NO_RESCAN = CONFIG.format(rescan_s=3600)
CAFE = b"caf\xe9.csv"  # latin-1 bytes: not UTF-8


def bname(raw: bytes) -> str:
    """A name as Python holds it (surrogateescape), exact on disk."""
    return os.fsdecode(raw)


def ids(db: Db) -> list[int]:
    if not db.val("SELECT to_regclass('t')"):
        return []
    return [r["id"] for r in db.fetch("SELECT id::int AS id FROM t ORDER BY 1")]


def today(tmp_path: Path) -> Path:
    return tmp_path / "done" / dt.date.today().isoformat()


@pytest.fixture
def start_daemon(daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """`daemons`, with rescans too rare to matter unless told otherwise."""
    return lambda config=NO_RESCAN: daemons(config)


def assert_alive(daemon: Daemon) -> None:
    assert daemon.proc.poll() is None, daemon.logs_text()
    assert daemon.get("/healthz")[0] == 200


# --- names that are not UTF-8 ------------------------------------------------------------


def test_daemon_loads_a_name_that_is_not_utf8_and_keeps_watching(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """The name that killed the daemon within a second: it loads, lands in done/ under its
    own bytes, has a manifest row in its \\xNN form; the watcher outlives the error and
    still reports later files (rescans are off), in a folder with such a name too."""
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    drop(inbox, CAFE, csv_rows(3))
    wait_for(lambda: ids(db) == [1, 2, 3], what="the file named caf\\xe9.csv")
    drop(inbox / bname(b"d\xe9p\xf4t"), b"inner.csv", csv_rows(2, start=4))
    wait_for(lambda: ids(db) == [1, 2, 3, 4, 5], what="a file in a folder named d\\xe9p\\xf4t")
    drop(inbox, b"plain.csv", csv_rows(2, start=6))
    wait_for(lambda: ids(db) == list(range(1, 8)), what="a plain file after the watcher errors")
    wait_for(lambda: (today(tmp_path) / "plain.csv").exists(), what="plain.csv archived")
    assert_alive(daemon)

    assert os.path.exists(os.fsencode(today(tmp_path)) + b"/" + CAFE)
    assert os.path.exists(os.fsencode(today(tmp_path)) + b"/d\xe9p\xf4t/inner.csv")
    manifest = {r["filename"]: r for r in db.manifest()}
    assert set(manifest) == {"caf\\xe9.csv", "d\\xe9p\\xf4t/inner.csv", "plain.csv"}
    assert {r["status"] for r in manifest.values()} == {"success"}
    assert manifest["caf\\xe9.csv"]["rows"] == 3
    errors = daemon.events("watcher_error")
    assert errors and "Unable to decode path" in errors[0]["error"]
    assert daemon.metric("ingest_watcher_restarts_total") >= 1
    finished = [e["file"] for e in daemon.events("file_finished")]
    assert "caf\\xe9.csv" in finished  # readable in the log, as in the manifest
    assert daemon.stop() == 0
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


def test_a_name_that_is_not_utf8_present_at_start_survives_the_rescans(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """There at start, the file used to kill the daemon at the first rescan."""
    inbox = tmp_path / "inbox"
    drop(inbox, CAFE, csv_rows(2))
    daemon = start_daemon(CONFIG.format(rescan_s=0.3))
    wait_for(lambda: ids(db) == [1, 2], what="the file present at start")
    restarts = daemon.metric("ingest_watcher_restarts_total")
    drop(inbox, b"later.csv", csv_rows(1, start=3))
    wait_for(lambda: ids(db) == [1, 2, 3], what="a later file")
    # Several rescans later, still there and still loading.
    wait_for(lambda: len(daemon.events("file_finished")) == 2, what="two files finished")
    time.sleep(1.0)
    assert_alive(daemon)
    assert daemon.metric("ingest_watcher_restarts_total") >= restarts
    assert daemon.stop() == 0
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


def test_a_folder_named_not_utf8_does_not_restart_the_watcher_forever(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """The recursive watch failed at every start while such a folder existed: about two
    restarts a second, for ever. Now the watcher restarts a bounded number of times while
    nothing changes, and files in that folder (and below it) and elsewhere still load with
    rescans off."""
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    odd = os.fsencode(inbox) + b"/d\xff"
    os.mkdir(odd)
    wait_for(lambda: daemon.events("watcher_error"), what="the watcher's error")
    time.sleep(1.5)  # let it settle
    restarts = daemon.metric("ingest_watcher_restarts_total")
    time.sleep(3.0)  # a dozen restarts before, at two a second
    assert daemon.metric("ingest_watcher_restarts_total") == restarts
    drop(inbox / bname(b"d\xff"), b"in.csv", csv_rows(2))
    wait_for(lambda: ids(db) == [1, 2], what="a file in the folder named d\\xff")
    drop(inbox / bname(b"d\xff") / "deeper", b"deep.csv", csv_rows(2, start=3))
    wait_for(lambda: ids(db) == [1, 2, 3, 4], what="a file in a folder below it")
    drop(inbox / "plain", b"p.csv", csv_rows(2, start=5))
    wait_for(lambda: ids(db) == list(range(1, 7)), what="a file in a new UTF-8 folder")
    settled = daemon.metric("ingest_watcher_restarts_total")
    time.sleep(3.0)
    assert daemon.metric("ingest_watcher_restarts_total") == settled
    assert settled - restarts <= 6, (restarts, settled)  # a few per change, not per second
    assert_alive(daemon)
    assert daemon.stop() == 0
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


def test_once_loads_or_fails_names_that_are_not_utf8_and_books_them(
    cli: Callable[..., object], db: Db, tmp_path: Path
) -> None:
    """--once used to drop such a file silently ("0 loaded, 0 skipped, 0 failed", exit 0).
    Now each one is loaded, or failed with a manifest row, a place in failed/ under its
    own bytes and a sidecar naming it in its manifest form."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    inbox = tmp_path / "inbox"
    drop(inbox, CAFE, "id\n1\n2\n")
    (inbox / bname(b"g\xe9.csv.gz")).write_bytes(gzip.compress(b"id\n3\n"))
    pq.write_table(pa.table({"id": [4]}), tmp_path / "p.parquet")
    os.rename(tmp_path / "p.parquet", inbox / bname(b"p\xe9.parquet"))
    drop(inbox, b"back\\slash.csv", "id\n5\n")
    drop(inbox, b"bad\xff.csv", "no_id\n1\n")  # fails: no primary key column
    result = cli("--inbox", inbox, "--once", "--table", "t", "--pk", "id")
    assert result.code == 1, result.err  # one file failed
    assert "4 loaded, 0 skipped, 1 failed" in result.out
    assert "caf\\xe9.csv -> t" in result.out and "bad\\xff.csv -> t" in result.out
    assert ids(db) == [1, 2, 3, 4, 5]
    manifest = {r["filename"]: r["status"] for r in db.manifest()}
    assert manifest == {
        "caf\\xe9.csv": "success",
        "g\\xe9.csv.gz": "success",
        "p\\xe9.parquet": "success",
        "back\\\\slash.csv": "success",  # a literal backslash is doubled: one form per name
        "bad\\xff.csv": "failed",
    }
    failed = os.fsencode(tmp_path / "failed")
    assert sorted(os.listdir(failed)) == [b"bad\xff.csv", b"bad\xff.csv.error.json"]
    sidecar = (tmp_path / "failed" / bname(b"bad\xff.csv.error.json")).read_text()
    assert '"file": "bad\\\\xff.csv"' in sidecar
    assert os.listdir(inbox) == []
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


# --- the inbox goes away -----------------------------------------------------------------


def test_inbox_deleted_and_recreated_is_reported_and_watched_again(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """The watcher never came back, /readyz stayed 200: now the daemon says the inbox is
    missing, is not ready meanwhile, and finds files promptly once it is back."""
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    drop(inbox, b"first.csv", csv_rows(2))
    # Moved to done/ too: the rows commit before the move, and a file still in the inbox
    # would go with it (its bytes then nowhere: the books would rightly disagree).
    wait_for(
        lambda: ids(db) == [1, 2] and not (inbox / "first.csv").exists(),
        what="a file loaded and moved before the inbox goes",
    )
    shutil.rmtree(inbox)
    wait_for(lambda: daemon.get("/readyz")[0] == 503, what="not ready without an inbox")
    assert daemon.metric("ingest_ready") == 0
    time.sleep(1.2)  # several looks at the missing inbox: still one line
    missing = daemon.events("inbox_missing")
    assert len(missing) == 1 and missing[0]["reason"] == "it does not exist"
    inbox.mkdir()
    wait_for(lambda: daemon.get("/readyz")[0] == 200, what="ready again")
    assert len(daemon.events("inbox_back")) == 1
    drop(inbox, b"second.csv", csv_rows(2, start=3))
    wait_for(lambda: ids(db) == [1, 2, 3, 4], what="a file in the recreated inbox (no rescan)")
    assert_alive(daemon)
    assert daemon.stop() == 0
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


def test_inbox_replaced_between_two_looks_is_watched_again(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """Renamed away and created again at once: the watcher still watched the old folder."""
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    os.rename(inbox, tmp_path / "old-inbox")
    inbox.mkdir()
    wait_for(lambda: daemon.events("inbox_back"), what="the new inbox noticed")
    drop(inbox, b"new.csv", csv_rows(2))
    wait_for(lambda: ids(db) == [1, 2], what="a file in the new inbox (no rescan)")
    assert daemon.get("/readyz")[0] == 200
    assert daemon.stop() == 0


# --- an unreadable folder ----------------------------------------------------------------


def test_unreadable_subfolder_is_reported_once_and_loaded_once_readable(
    tcp_dsn: str, db: Db, tmp_path: Path
) -> None:
    """Skipped for ever without a word before. Now: one warning with the reason (not one
    per rescan), a gauge, readable siblings load, and the folder's files load once it can
    be listed again."""
    prefix = without_root_powers()
    inbox = tmp_path / "inbox"
    drop(inbox / "open", b"a.csv", csv_rows(2))
    drop(inbox / "locked", b"b.csv", csv_rows(2, start=3))
    (inbox / "locked").chmod(0)
    daemon = Daemon(tmp_path, tcp_dsn, CONFIG.format(rescan_s=0.3), prefix=prefix)
    try:
        daemon.wait_ready()
        wait_for(lambda: ids(db) == [1, 2], what="the readable sibling")
        wait_for(lambda: daemon.metric("ingest_inbox_unreadable_folders") == 1, what="the gauge")
        time.sleep(1.5)  # several rescans
        warned = daemon.events("folder_unreadable")
        assert len(warned) == 1, warned
        assert warned[0]["folder"].endswith("inbox/locked")
        assert warned[0]["reason"] == "Permission denied"
        assert warned[0]["level"] == "WARNING"
        (inbox / "locked").chmod(0o755)
        wait_for(lambda: ids(db) == [1, 2, 3, 4], what="the folder's file once readable")
        wait_for(lambda: daemon.metric("ingest_inbox_unreadable_folders") == 0, what="gauge 0")
        assert len(daemon.events("folder_readable")) == 1
        assert_alive(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.stop() == 0
    finally:
        (inbox / "locked").chmod(0o755)
        daemon.kill()
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


# --- the oldest-waiting gauge ------------------------------------------------------------


def test_oldest_waiting_counts_only_files_still_waiting(
    start_daemon: Callable[..., Daemon], db: Db, tmp_path: Path
) -> None:
    """A file seen and gone before it was offered (an uploader's x.csv.uploading renamed,
    or taken by another instance) kept the gauge climbing for ever on an empty inbox."""
    inbox = tmp_path / "inbox"
    daemon = start_daemon()

    def oldest() -> float:
        return daemon.metric("ingest_oldest_waiting_file_age_seconds")

    # Held open by its writer, an upload never settles: it waits until it is renamed.
    away = inbox / "x.csv.uploading"
    with away.open("w") as fh:
        fh.write(csv_rows(2))
        fh.flush()
        wait_for(lambda: oldest() > 0, what="the upload counted as waiting")
        os.rename(away, tmp_path / "taken.csv")  # taken out of the inbox
    wait_for(lambda: oldest() == 0, what="the gauge back at 0 on an empty inbox")

    here = inbox / "y.csv.uploading"
    with here.open("w") as fh:
        fh.write(csv_rows(2, start=3))
        fh.flush()
        wait_for(lambda: oldest() > 0, what="the second upload counted as waiting")
        os.rename(here, inbox / "y.csv")  # finished: renamed to its real name
    wait_for(lambda: ids(db) == [3, 4], what="y.csv loaded")
    wait_for(lambda: oldest() == 0, what="the gauge at 0 once y.csv is loaded")
    assert os.listdir(inbox) == []
    assert_alive(daemon)
    assert daemon.stop() == 0
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


def _ingestd(
    prefix: tuple[str, ...], cwd: Path, *args: str | Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ingestd", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def test_once_reports_an_unreadable_folder_and_refuses_an_unreadable_inbox(
    tcp_dsn: str, db: Db, tmp_path: Path
) -> None:
    """--once: the folder it cannot list is named (its file is not silently absent), the
    rest loads; an inbox it cannot list is one readable line and exit 2, not '0 loaded'."""
    prefix = without_root_powers()
    inbox = tmp_path / "inbox"
    drop(inbox, b"a.csv", csv_rows(2))
    drop(inbox / "locked", b"b.csv", csv_rows(2, start=3))
    (inbox / "locked").chmod(0)
    base = ("--dsn", tcp_dsn, "--metrics-addr", "off", "--table", "t", "--pk", "id")
    try:
        (inbox / "open" / "deeper").mkdir(parents=True)
        (inbox / "open" / "deeper").chmod(0)
        run = _ingestd(prefix, tmp_path, "--inbox", inbox, "--once", *base)
        # Files it never saw: not a clean run (it used to exit 0 with "0 failed").
        assert run.returncode == 1, run.stderr
        assert "1 loaded, 0 skipped, 0 failed" in run.stdout
        assert (
            "  2 folders could not be read: locked (Permission denied), "
            "open/deeper (Permission denied)\n"
        ) in run.stdout
        assert '"event": "folder_unreadable"' in run.stderr and "Permission denied" in run.stderr
        assert ids(db) == [1, 2]
        inbox.chmod(0)
        run = _ingestd(prefix, tmp_path, "--inbox", inbox, "--once", *base)
    finally:
        inbox.chmod(0o755)
        (inbox / "locked").chmod(0o755)
        (inbox / "open" / "deeper").chmod(0o755)
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert (
        line == f"ingestd: error: cannot use the inbox {inbox}: cannot list it: Permission denied"
    )
    assert "Traceback" not in run.stderr
    check_books(db, inbox, tmp_path / "done", tmp_path / "failed", table="t")


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ('done_dir = "inbox"', "done_dir {t}/inbox is the inbox {t}/inbox"),
        ('done_dir = "inbox/done"', "done_dir {t}/inbox/done is inside the inbox"),
        ('failed_dir = "inbox/x/failed"', "failed_dir {t}/inbox/x/failed is inside the inbox"),
        ('done_dir = "."', "the inbox {t}/inbox is inside done_dir"),
        ('failed_dir = "linked"', "failed_dir {t}/linked is inside the inbox"),
    ],
)
def test_settings_that_would_loop_are_refused_at_start_and_by_check_config(
    dsn: str, db: Db, tmp_path: Path, setting: str, fragment: str
) -> None:
    """done_dir set to the inbox reloaded every file on every rescan (duplicates in append
    mode). Such settings are now refused, in one line, before anything is read or moved."""
    inbox = tmp_path / "inbox"
    drop(inbox, b"a.csv", csv_rows(2))
    (tmp_path / "linked").symlink_to(inbox / "sub", target_is_directory=True)
    config = tmp_path / "ingestd.toml"
    config.write_text(NO_RESCAN.replace("shutdown_grace_s = 20", setting))
    start = _ingestd((), tmp_path, "--config", config, "--dsn", dsn, "--metrics-addr", "off")
    assert start.returncode == 2
    line = start.stderr.strip()
    assert line.startswith("ingestd: error: ") and "\n" not in line
    assert fragment.format(t=tmp_path) in line
    assert "would be found and loaded again" in line
    check = _ingestd((), tmp_path, "check-config", config)
    assert check.returncode == 2
    assert fragment.format(t=tmp_path) in check.stderr
    assert os.listdir(inbox) == ["a.csv"]
    assert db.val("SELECT to_regclass('ingestion_manifest')") is None


def test_an_inbox_that_cannot_be_created_is_waited_for(dsn: str, db: Db, tmp_path: Path) -> None:
    """mkdir of the inbox failing at start (here: its parent is a file) was an internal
    error; now the daemon starts, is not ready, says why, and loads once the inbox exists."""
    (tmp_path / "mnt").write_text("not mounted yet")
    config = NO_RESCAN.replace('inbox = "inbox"', 'inbox = "mnt/inbox"')
    daemon = Daemon(tmp_path, dsn, config)
    try:
        wait_for(lambda: daemon.events("inbox_missing"), what="inbox_missing")
        assert daemon.proc.poll() is None, daemon.logs_text()
        assert daemon.get("/readyz")[0] == 503
        (tmp_path / "mnt").unlink()
        (tmp_path / "mnt" / "inbox").mkdir(parents=True)
        daemon.wait_ready()
        drop(tmp_path / "mnt" / "inbox", b"a.csv", csv_rows(2))
        wait_for(lambda: ids(db) == [1, 2], what="a file in the inbox once it exists")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    mnt = tmp_path / "mnt"
    check_books(db, mnt / "inbox", mnt / "done", mnt / "failed", table="t")
