"""A bug met while offering a file: internal_error with its traceback, counted; the file
stays in the inbox; --once reports it (exit 1); discovery goes on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import scanner as scanner_module
from ingestd.db.manifest import FileVersion, Manifest
from ingestd.metrics import Metrics
from ingestd.model import Outcome, Results
from ingestd.retry import Backoff
from ingestd.scanner import Scanner
from ingestd.settings import Contract, Settings


async def test_a_bug_while_offering_is_an_internal_error_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "f.csv"
    f.write_text("id\n1\n")

    async def buggy(path: Path, name: PurePosixPath, size: int | None = None) -> FileVersion:
        raise KeyError("x")

    monkeypatch.setattr(scanner_module, "file_version", buggy)
    settings = Settings(
        contracts=(Contract(name="c", pattern="*.csv", table="t"),), inbox=inbox, once=True
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    results, metrics = Results(), Metrics()
    # No database: the bug comes before any claim.
    scanner = Scanner(settings, None, Manifest(None, "m"), queue, results, metrics, "r",
                      Backoff())  # type: ignore[arg-type]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ingestd.scanner"):
        assert await scanner._try_offer(f) is True  # discovery goes on
    [result] = results.files
    assert (result.name, result.status) == ("f.csv", Outcome.INTERNAL_ERROR)
    assert result.error is not None and "a bug in ingestd" in result.error
    [record] = [r for r in caplog.records if r.getMessage() == "internal_error"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    assert metrics.registry.get_sample_value("ingest_internal_errors_total") == 1
    assert f.exists() and not (tmp_path / "failed").exists() and queue.empty()
