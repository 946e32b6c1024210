"""The daemon as a real subprocess: discovery, settle, lifecycle, metrics, signals, outages."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, drop, row_count
from tests.pg import Db

CONFIG = """
inbox = "inbox"
settle_s = 0.2
shutdown_grace_s = 20
{extra}
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""
BASIC = CONFIG.format(extra="")


@pytest.fixture
def start_daemon(daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """`daemons`, with this module's config unless told otherwise."""
    return lambda config=BASIC, *args: daemons(config, *args)


def test_files_present_before_start_and_dropped_later_are_loaded(
    start_daemon, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "early.csv", csv_rows(3))
    write(inbox / "sub" / "nested.csv", csv_rows(2, start=100))
    daemon = start_daemon()
    wait_for(lambda: row_count(db) == 5, what="files present at start")
    started = time.monotonic()
    drop(inbox, "late.csv", csv_rows(4, start=200))
    wait_for(lambda: row_count(db) == 9, timeout_s=5, what="a dropped file")
    assert time.monotonic() - started < 3
    wait_for(
        lambda: (tmp_path / "done").exists() and len(list((tmp_path / "done").rglob("*.csv"))) == 3
    )
    assert {p.name for p in (tmp_path / "done").rglob("*.csv")} == {
        "early.csv",
        "nested.csv",
        "late.csv",
    }
    assert not list(inbox.rglob("*.csv"))
    assert daemon.metric("ingest_files_processed_total", file_type="csv", status="success") == 3
    assert daemon.metric("ingest_rows_upserted_total", table_name="t") == 9
    batches = [
        daemon.metric("ingest_batches_processed_total", file_type="csv", worker_id=f"w{i}")
        for i in range(4)
    ]
    assert sum(batches) == 3
    assert daemon.metric("ingest_ready") == 1
    assert daemon.get("/healthz")[0] == 200
    assert daemon.stop() == 0
    assert "3 loaded, 0 skipped, 0 failed" in daemon.out_path.read_text()


def test_slow_writer_is_loaded_once_and_complete(start_daemon, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    start_daemon()

    def slow_write() -> None:
        with (inbox / "slow.csv").open("w") as fh:
            fh.write("id,v\n")
            for i in range(1, 9):
                fh.write(f"{i},v{i}\n")
                fh.flush()
                time.sleep(0.4)  # longer than the settle interval: only the open writer tells

    writer = threading.Thread(target=slow_write)
    writer.start()
    writer.join()
    wait_for(lambda: row_count(db) == 8, what="the slow file")
    time.sleep(0.5)
    manifest = db.manifest()
    assert [(m["status"], m["rows"]) for m in manifest] == [("success", 8)]


def test_ignored_and_non_regular_files_are_left_alone(start_daemon, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = write(tmp_path / "outside.csv", csv_rows(1, start=900))
    os.symlink(outside, inbox / "link.csv")
    os.mkfifo(inbox / "pipe.csv")
    for name in (".hidden.csv", "a.csv.tmp", "b.csv.part", "c.csv.partial"):
        write(inbox / name, csv_rows(1, start=500))
    start_daemon()
    drop(inbox, "real.csv", csv_rows(2))
    wait_for(lambda: row_count(db) == 2, what="the regular file")
    time.sleep(0.5)
    assert sorted(p.name for p in inbox.iterdir()) == sorted(
        ["link.csv", "pipe.csv", ".hidden.csv", "a.csv.tmp", "b.csv.part", "c.csv.partial"]
    )
    assert [Path(m["filename"]).name for m in db.manifest()] == ["real.csv"]
    assert outside.exists()


def test_unmatched_file_goes_to_failed_with_sidecar(start_daemon, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    drop(inbox, "notes.txt", "hello\n")
    sidecar = tmp_path / "failed" / "notes.txt.error.json"
    wait_for(sidecar.exists, what="the sidecar")
    report = json.loads(sidecar.read_text())
    assert "no contract matches notes.txt" in report["reason"]
    assert report["run_id"] and report["time"]
    assert (tmp_path / "failed" / "notes.txt").read_text() == "hello\n"
    [m] = db.manifest()
    assert (m["filename"], m["status"], m["table_name"]) == ("notes.txt", "failed", "")
    assert "no contract matches" in m["notes"] and len(m["checksum"]) == 32
    wait_for(
        lambda: daemon.metric("ingest_files_processed_total", file_type="csv", status="failed") == 1
    )


def test_bad_file_fails_alone_and_daemon_goes_on(start_daemon, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    drop(inbox, "bad.csv", "id,v\n1,a\n2,b,c\n")
    drop(inbox, "good.csv", csv_rows(3))
    wait_for(lambda: (tmp_path / "failed" / "bad.csv.error.json").exists(), what="failed bad.csv")
    wait_for(lambda: row_count(db) == 3, what="good.csv")
    statuses = {Path(m["filename"]).name: m["status"] for m in db.manifest()}
    assert statuses == {"bad.csv": "failed", "good.csv": "success"}
    assert daemon.proc.poll() is None


def test_sigterm_during_large_file_commits_whole_batches_then_resumes(
    start_daemon, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    config = CONFIG.format(extra="chunk_size = 2000\n").replace('pk = ["id"]', 'mode = "append"')
    daemon = start_daemon(config)
    total = 400_000
    drop(inbox, "big.csv", csv_rows(total))
    wait_for(lambda: db.progress() > 0, what="first batch")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    [m] = db.manifest()
    assert m["status"] == "pending" and 0 < m["rows"] < total
    assert m["batches"] >= 1  # whole batches only: the count below matches the manifest
    assert row_count(db) == m["rows"]  # no partial batch
    assert (inbox / "big.csv").exists()
    assert "1 interrupted" in daemon.out_path.read_text()

    again = start_daemon(config)
    wait_for(lambda: db.manifest()[0]["status"] == "success", timeout_s=60, what="resume")
    assert row_count(db) == total
    assert db.val("SELECT count(DISTINCT id) FROM t") == total
    assert again.stop() == 0


def test_second_signal_aborts_at_once_without_half_batch(
    start_daemon, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    config = CONFIG.format(extra="chunk_size = 100000\n").replace('pk = ["id"]', 'mode = "append"')
    daemon = start_daemon(config)
    drop(inbox, "big.csv", csv_rows(600_000))
    wait_for(lambda: db.progress() > 0, what="first batch")
    daemon.signal(signal.SIGTERM)
    time.sleep(0.05)
    daemon.signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.proc.wait(20) == 0
    assert time.monotonic() - started < 5
    [m] = db.manifest()
    assert row_count(db) == m["rows"] and m["rows"] > 0  # no half-committed batch


def test_sighup_reloads_contracts(start_daemon, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    daemon = start_daemon()
    daemon.config.write_text(
        CONFIG.format(extra="")
        + '\n[[contracts]]\nname = "other"\npattern = "*.tsv"\ntable = "other"\npk = ["id"]\n'
        + '[contracts.csv]\ndelimiter = "tab"\n'
    )
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reloaded"), what="reload")
    drop(inbox, "x.tsv", "id\tv\n1\ta\n")
    wait_for(lambda: row_count(db, "other") == 1, what="the new contract's file")
    assert db.fetch("SELECT id, v FROM other") == [{"id": "1", "v": "a"}]
    daemon.config.write_text("this is not toml [")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reload_failed"), what="bad reload reported")
    drop(inbox, "y.csv", csv_rows(1))
    wait_for(lambda: row_count(db) == 1, what="the old config still works")


def test_status_command_reports_counts_and_failures(
    start_daemon, db: Db, tmp_path: Path, dsn: str
) -> None:
    from tests.conftest import run_cli

    inbox = tmp_path / "inbox"
    start_daemon()
    drop(inbox, "ok.csv", csv_rows(2))
    drop(inbox, "bad.csv", "id,v\n1\n")
    wait_for(lambda: len([m for m in db.manifest() if m["status"] != "pending"]) == 2)
    result = run_cli(["status", "--dsn", dsn])
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[1].split() == ["success", "1", "2", "0"]
    assert lines[3].split() == ["failed", "1", "0", "0"]
    assert "bad.csv -> t: row 1 has 1 fields" in result.out
    as_json = json.loads(run_cli(["status", "--dsn", dsn, "--json"]).out)
    assert as_json["counts"]["success"] == {"files": 1, "rows": 2, "rejected": 0}


SPLIT = CONFIG.format(extra="concurrency = 3\nchunk_size = 500\nsplit_mb = 0.1").replace(
    'pk = ["id"]', 'pk = ["id"]\nmode = "append"'
)


def test_a_large_file_is_split_across_workers_and_survives_sigterm(
    start_daemon, db: Db, tmp_path: Path
) -> None:
    """Workers share the file; SIGTERM stops them between batches; the next start finishes
    every segment, each row once, and moves the file to done/ once."""
    inbox = tmp_path / "inbox"
    total = 60_000
    daemon = start_daemon(SPLIT)
    drop(inbox, "big.csv", csv_rows(total))
    wait_for(lambda: row_count(db) > 0, what="the first batches")
    [split] = daemon.events("file_split")
    assert split["segments"] == 3
    daemon.signal(signal.SIGTERM)
    daemon.proc.wait(30)  # one signal: workers stop between batches (a second would cancel)
    assert daemon.stop() == 0
    loaded = row_count(db)
    [m] = db.manifest()
    assert len(m["segment_ends"]) == 3
    if loaded < total:  # stopped mid-file: it stays in the inbox, its segments where they are
        assert m["status"] == "pending" and m["rows"] == loaded
        assert (inbox / "big.csv").exists()
    again = start_daemon(SPLIT)
    wait_for(lambda: row_count(db) == total, what="the rest of the segments")
    wait_for(lambda: len(list((tmp_path / "done").rglob("big.csv"))) == 1, what="done/")
    assert db.val("SELECT count(DISTINCT id) FROM t") == total
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", total)
    assert m["segment_done"] == m["segment_ends"]
    assert again.metric("ingest_batches_processed_total", file_type="csv", worker_id="w0") > 0
    assert again.stop() == 0
    batches = daemon.events("batch_committed") + again.events("batch_committed")
    assert len(batches) == m["batches"] and sum(b["rows"] for b in batches) == total
    assert len({b["worker_id"] for b in batches}) >= 2  # idle workers helped
