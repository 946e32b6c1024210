"""A bug in ingestd never fails a good file: it stays pending in the inbox, is logged once
as internal_error with its traceback, is counted, and the other files load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ingestd.load import BatchLoader, Piece, Tally
from ingestd.metrics import Metrics
from ingestd.service import Service
from ingestd.settings import Contract, Settings
from tests.helpers import log_events, write
from tests.pg import Db


def _bug_in_the_batch_path(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """_checkpoint, deep in a batch's transaction, raises KeyError for the file `name`."""
    checkpoint = BatchLoader._checkpoint

    async def buggy(self: BatchLoader, piece: Piece, tally: Tally, rows: int) -> None:
        if self.job.name.name == name:
            raise KeyError("x")
        await checkpoint(self, piece, tally, rows)

    monkeypatch.setattr(BatchLoader, "_checkpoint", buggy)


def _internal_errors(metrics: Metrics) -> float:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "ingest_internal_errors_total":
                return sample.value
    raise AssertionError("ingest_internal_errors_total is not exposed")


def _status(db: Db, name: str) -> str:
    return str(db.val("SELECT status FROM ingestion_manifest WHERE filename LIKE $1", f"%{name}"))


def test_once_a_bug_leaves_the_file_pending_in_the_inbox(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    bad = write(inbox / "bad.csv", "id,v\n1,a\n2,b\n")
    write(inbox / "good.csv", "id,v\n3,c\n4,d\n")
    _bug_in_the_batch_path(monkeypatch, "bad.csv")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    assert result.code == 1, result.err  # the file did not load
    assert bad.exists() and not (tmp_path / "failed").exists()
    assert [p.name for p in (tmp_path / "done").rglob("*.csv")] == ["good.csv"]
    assert sorted(str(r["id"]) for r in db.fetch("SELECT id FROM t")) == ["3", "4"]
    assert _status(db, "bad.csv") == "pending" and _status(db, "good.csv") == "success"
    [event] = log_events(result.err, "internal_error")
    assert event["level"] == "ERROR" and event["error"] == "KeyError: 'x'"
    assert "Traceback" in str(event.get("exc_info")) and "_checkpoint" in str(event["exc_info"])
    assert "transient" not in result.err and "will retry" not in result.out
    assert "internal error (a bug in ingestd)" in result.out and "1 internal error;" in result.out
    assert not log_events(result.err, "file_retry")


async def test_daemon_a_bug_leaves_the_file_pending_and_goes_on(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    inbox = tmp_path / "inbox"
    bad = write(inbox / "bad.csv", "id,v\n1,a\n2,b\n")
    write(inbox / "good.csv", "id,v\n3,c\n4,d\n")
    _bug_in_the_batch_path(monkeypatch, "bad.csv")
    settings = Settings(
        contracts=(Contract(name="t", pattern="*.csv", table="t", mode="append"),),
        inbox=inbox, dsn=dsn, metrics_addr=None, settle_s=0.05, rescan_s=3600.0,
        shutdown_grace_s=5.0,
    )  # fmt: skip
    service = Service(settings)
    with caplog.at_level(logging.INFO):
        run = asyncio.create_task(service.run())
        try:
            for _ in range(400):
                if len(service.results.files) >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            service.request_stop()
            report = await asyncio.wait_for(run, 60)
    outcomes = {f.name: f.status for f in report.files}
    assert outcomes == {"bad.csv": "internal_error", "good.csv": "success"}
    assert not run.cancelled() and report.exit_code == 0  # the daemon went on
    assert bad.exists() and not (tmp_path / "failed").exists()
    assert [p.name for p in (tmp_path / "done").rglob("*.csv")] == ["good.csv"]
    # Db's helpers run their own event loop: from a thread.
    assert await asyncio.to_thread(_status, db, "bad.csv") == "pending"
    assert _internal_errors(service.metrics) == 1
    [record] = [r for r in caplog.records if r.getMessage() == "internal_error"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    assert not [r for r in caplog.records if r.getMessage() == "file_retry"]
