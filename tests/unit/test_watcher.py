"""The inbox watcher outlives its errors and follows the inbox away and back (real inotify)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.metrics import Metrics
from ingestd.watcher import InboxWatcher, inbox_problem


async def _until(check: Callable[[], bool], watcher: InboxWatcher, what: str) -> None:
    for _ in range(400):  # 20 s
        watcher.poll()
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _append(path: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(b"id\n1\n")


def test_inbox_problem_says_why(tmp_path: Path) -> None:
    assert inbox_problem(tmp_path)[1] is None
    assert inbox_problem(tmp_path / "absent") == (None, "it does not exist")
    (tmp_path / "file").write_text("x")
    assert inbox_problem(tmp_path / "file") == (None, "it is not a directory")


async def test_a_name_the_watcher_cannot_decode_only_restarts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Path] = []
    metrics = Metrics()
    watcher = InboxWatcher(tmp_path, (), seen.append, metrics)
    try:
        await _until(lambda: watcher.rescan_due(), watcher, "the watcher up")
        with caplog.at_level(logging.DEBUG, logger="ingestd.watcher"):
            for raw in (b"caf\xe9.csv", b"caf\xe9.csv"):
                _append(os.fsencode(tmp_path) + b"/" + raw)
                await _until(lambda: watcher.rescan_due(), watcher, "a rescan after the error")
            (tmp_path / "plain.csv").write_text("id\n1\n")
            await _until(lambda: tmp_path / "plain.csv" in seen, watcher, "a later event")
        assert metrics.watcher_restarts._value.get() >= 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == ["watcher_error"]  # once, not per error
        assert "Unable to decode path" in warnings[0].__dict__["error"]
        assert watcher.ok
    finally:
        await watcher.close()


async def test_the_watcher_follows_the_inbox_away_and_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    seen: list[Path] = []
    watcher = InboxWatcher(inbox, (), seen.append, Metrics())
    try:
        with caplog.at_level(logging.INFO, logger="ingestd.watcher"):
            await _until(lambda: watcher.rescan_due(), watcher, "the watcher up")
            shutil.rmtree(inbox)
            await _until(lambda: not watcher.ok, watcher, "the inbox missing")
            for _ in range(20):
                watcher.poll()
                await asyncio.sleep(0.05)
            inbox.mkdir()
            await _until(lambda: watcher.ok, watcher, "the inbox back")
            await _until(lambda: watcher.rescan_due(), watcher, "a rescan once it is back")
            (inbox / "new.csv").write_text("id\n1\n")
            await _until(lambda: inbox / "new.csv" in seen, watcher, "an event in the new inbox")
        events = [r.getMessage() for r in caplog.records]
        assert events.count("inbox_missing") == 1 and events.count("inbox_back") == 1
    finally:
        await watcher.close()
