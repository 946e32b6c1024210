"""A stop (SIGTERM) in a --once run: every file claimed is accounted for, and the run does
not exit 0 while files were left unfinished (DESIGN.md: 0 means every file succeeded or
was skipped)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestd.load import BatchLoader, Piece, Tally
from ingestd.service import Service
from ingestd.settings import Contract, Settings
from tests.helpers import csv_rows, write
from tests.pg import Db


def _slow_batches(monkeypatch: pytest.MonkeyPatch, started: asyncio.Event, delay_s: float) -> None:
    checkpoint = BatchLoader._checkpoint

    async def slow(self: BatchLoader, piece: Piece, tally: Tally, rows: int) -> None:
        started.set()
        await asyncio.sleep(delay_s)
        await checkpoint(self, piece, tally, rows)

    monkeypatch.setattr(BatchLoader, "_checkpoint", slow)


def _settings(dsn: str, inbox: Path, **extra: object) -> Settings:
    return Settings(
        contracts=(Contract(name="t", pattern="*.csv", table="t", mode="append"),),
        inbox=inbox, dsn=dsn, metrics_addr=None, settle_s=0.05, once=True,
        chunk_size=10, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_once_stopped_with_files_interrupted_exits_1(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    for n in range(3):
        write(inbox / f"f{n}.csv", csv_rows(100, start=1 + 1000 * n))
    started = asyncio.Event()
    _slow_batches(monkeypatch, started, 0.2)
    service = Service(_settings(dsn, inbox, concurrency=1, shutdown_grace_s=10.0))
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(started.wait(), 60)
    service.request_stop()
    report = await asyncio.wait_for(run, 60)
    statuses = sorted(f.status for f in report.files)
    assert "interrupted" in statuses and "success" not in statuses, report.files
    assert report.exit_code == 1  # a killed backfill is not a complete one
    interrupted = [f for f in report.files if f.status == "interrupted"]
    assert all(f.error and "resumes on the next run" in f.error for f in interrupted)
    # Every claimed file is in the report.
    claimed = await asyncio.to_thread(db.val, "SELECT count(*) FROM ingestion_manifest")
    assert len(report.files) == claimed


def test_a_complete_once_run_still_exits_0(cli, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(3))
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    assert result.code == 0, result.err
