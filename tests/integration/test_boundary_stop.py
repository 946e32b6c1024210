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


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connections are refused


@pytest.mark.parametrize("once", [False, True])
async def test_a_stop_while_the_database_is_unreachable_at_start_up_ends_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, once: bool
) -> None:
    import logging

    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(1))
    settings = Settings(
        contracts=(Contract(name="t", pattern="*.csv", table="t", mode="append"),),
        inbox=inbox, dsn=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x",
        metrics_addr=None, once=once, max_retries=8, shutdown_grace_s=5.0,
    )  # fmt: skip
    service = Service(settings)
    with caplog.at_level(logging.INFO):
        run = asyncio.create_task(service.run())
        for _ in range(600):
            if any(r.getMessage() == "db_connect_retry" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        service.request_stop()
        # Eight retries with backoff would take minutes: the stop ends them.
        report = await asyncio.wait_for(run, 60)
    assert report.files == ()
    assert report.exit_code == (1 if once else 0)  # a --once run stopped did not complete
    assert [r for r in caplog.records if r.getMessage() == "shutdown_before_start"]
    assert inbox.joinpath("a.csv").exists()


@pytest.mark.parametrize("how", ["deadline", "second signal"])
async def test_files_in_hand_when_the_workers_are_cancelled_are_reported(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    inbox = tmp_path / "inbox"
    for n in range(2):
        write(inbox / f"f{n}.csv", csv_rows(100, start=1 + 1000 * n))
    started = asyncio.Event()
    _slow_batches(monkeypatch, started, 3600.0)  # a batch that never ends by itself
    grace = 0.2 if how == "deadline" else 600.0
    service = Service(_settings(dsn, inbox, concurrency=2, shutdown_grace_s=grace))
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(started.wait(), 60)
    service.request_stop()
    if how == "second signal":
        await asyncio.sleep(0.1)
        service.request_stop()
    report = await asyncio.wait_for(run, 60)
    claimed = await asyncio.to_thread(db.val, "SELECT count(*) FROM ingestion_manifest")
    rows = await asyncio.to_thread(db.fetch, "SELECT filename, status FROM ingestion_manifest")
    assert claimed >= 1 and len(report.files) == claimed, (report.files, rows)
    assert {f.status for f in report.files} == {"interrupted"}
    assert all("resumes on the next run" in (f.error or "") for f in report.files)
    assert report.exit_code == 1


async def test_a_claimed_file_waiting_on_a_full_queue_is_reported(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    for n in range(8):
        write(inbox / f"f{n}.csv", csv_rows(20, start=1 + 1000 * n))
    started = asyncio.Event()
    _slow_batches(monkeypatch, started, 0.5)
    service = Service(_settings(dsn, inbox, concurrency=1, queue_size=1, shutdown_grace_s=10.0))
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(0.3)  # the scanner has claimed the next files and waits on the queue
    service.request_stop()
    report = await asyncio.wait_for(run, 60)
    claimed = await asyncio.to_thread(db.val, "SELECT count(*) FROM ingestion_manifest")
    assert claimed >= 3  # one in hand, one queued, one waiting for room
    assert len(report.files) == claimed, report.files
    assert len({f.name for f in report.files}) == claimed
