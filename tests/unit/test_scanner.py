"""The scanner's handling of a file that disappears between discovery and its checksum."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import scanner as scanner_module
from ingestd.db.manifest import FileVersion, Manifest
from ingestd.metrics import Metrics
from ingestd.retry import Backoff
from ingestd.scanner import Scanner
from ingestd.settings import Contract, Settings
from ingestd.worker import Results


async def test_a_file_moved_away_before_its_checksum_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance loads the file and moves it to done/ while this one is about to
    checksum it: no manifest row, no failed/ entry, no result; the scanner goes on."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "f.csv"
    f.write_text("id\n1\n")

    async def moved_first(path: Path, name: PurePosixPath) -> FileVersion:
        os.rename(path, tmp_path / "elsewhere.csv")
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(scanner_module, "file_version", moved_first)
    settings = Settings(contracts=(Contract(name="c", pattern="*.csv", table="t"),), inbox=inbox)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    results = Results()
    # No pool: touching the database here would be the bug.
    scanner = Scanner(
        settings,
        None,
        Manifest(None, "m"),
        queue,
        results,
        Metrics(),
        "r",
        Backoff(),  # type: ignore[arg-type]
    )
    await scanner.offer(f)
    assert results.files == [] and queue.empty()
    assert scanner.waiting == {} and scanner.in_hand == set()
    assert not (tmp_path / "failed").exists()
