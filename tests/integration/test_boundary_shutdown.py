"""Shutdown has one owner: after a stop no queued file is opened, and a background task that
dies stops the service loudly."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from ingestd import pipeline, scanner
from ingestd.load import BatchLoader, Piece, Tally
from ingestd.service import Service
from ingestd.settings import Contract, Settings
from tests.helpers import write
from tests.pg import Db

FILES = 4


def _settings(dsn: str, inbox: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "contracts": (Contract(name="t", pattern="*.csv", table="t", mode="append"),),
        "inbox": inbox, "dsn": dsn, "metrics_addr": None, "settle_s": 0.05,
        "rescan_s": 3600.0, "shutdown_grace_s": 20.0, "concurrency": 1, "queue_size": 10,
        "chunk_size": 2,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


async def test_after_a_stop_no_queued_file_is_opened(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    inbox = tmp_path / "inbox"
    for i in range(FILES):
        write(inbox / f"f{i}.csv", "id\n" + "".join(f"{i}{n}\n" for n in range(6)))
    service = Service(_settings(dsn, inbox))
    opened: list[str] = []
    claimed: list[str] = []
    open_reader, claim_file = pipeline.open_reader, scanner.claim_file
    checkpoint = BatchLoader._checkpoint

    def recording_open(path: Path, *args: Any) -> Any:
        opened.append(path.name)
        return open_reader(path, *args)

    async def recording_claim(conn: Any, manifest: Any, **kw: Any) -> Any:
        job = await claim_file(conn, manifest, **kw)
        claimed.append(kw["path"].name)
        return job

    async def stop_once_all_are_queued(
        self: BatchLoader, piece: Piece, tally: Tally, rows: int
    ) -> None:
        await checkpoint(self, piece, tally, rows)
        for _ in range(400):  # the scanner claims and queues the others meanwhile
            if len(claimed) == FILES:
                break
            await asyncio.sleep(0.025)
        service.request_stop()  # as SIGTERM does

    monkeypatch.setattr(pipeline, "open_reader", recording_open)
    monkeypatch.setattr(scanner, "claim_file", recording_claim)
    monkeypatch.setattr(BatchLoader, "_checkpoint", stop_once_all_are_queued)
    with caplog.at_level(logging.INFO):
        report = await asyncio.wait_for(service.run(), 60)
    assert len(claimed) == FILES, "the test did not queue every file before the stop"
    [first] = opened  # the file in hand; none of those queued behind it
    statuses = {f.name: (f.status, f.rows) for f in report.files}
    assert statuses == {
        name: ("interrupted", 2 if name == first else 0) for name in claimed
    }  # first: its batch in hand committed, then it stopped before the next one
    rows = await asyncio.to_thread(
        db.fetch, "SELECT filename, status, rows, attempts FROM ingestion_manifest"
    )
    assert {(r["status"], r["attempts"]) for r in rows} == {("pending", 1)}
    assert sorted(r["rows"] for r in rows) == [0] * (FILES - 1) + [2]
    interrupted = [r for r in caplog.records if r.getMessage() == "file_interrupted"]
    assert len(interrupted) == FILES and {r.levelno for r in interrupted} == {logging.INFO}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all((inbox / name).exists() for name in claimed)


async def test_a_dying_health_task_stops_the_service_loudly(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    async def broken_health(self: Service, db: Any, scanner: Any) -> None:
        await asyncio.sleep(0.1)
        raise KeyError("x")

    monkeypatch.setattr(Service, "_health", broken_health)
    service = Service(_settings(dsn, inbox))
    with pytest.raises(RuntimeError, match=r"ingestd-health stopped unexpectedly: KeyError\('x'\)"):
        await asyncio.wait_for(service.run(), 60)
