"""A bug while moving a finished file (the worker's first move, the scanner's retries, the
look at its row before one) is an internal_error: counted, retried later, and the caller
goes on; the file waits in the inbox."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PurePosixPath

import pytest
from prometheus_client import CollectorRegistry, Counter

from ingestd import archive
from ingestd.discover import identity
from tests.helpers import touch


def _counters() -> tuple[Counter, Counter]:
    registry = CollectorRegistry()
    errors = Counter("e", "e", ["folder", "reason"], registry=registry)
    return errors, Counter("bugs", "bugs", registry=registry)


def _pending(tmp_path: Path) -> archive.Pending:
    src = touch(tmp_path / "inbox" / "a.csv")
    return archive.Pending(src, PurePosixPath("a.csv"), "done", tmp_path / "done",
                           identity=identity(src))  # fmt: skip


def test_a_bug_in_the_move_is_counted_and_left_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    errors, bugs = _counters()
    item = _pending(tmp_path)

    def buggy(*_args: object) -> Path:
        raise KeyError("injected")

    monkeypatch.setattr(archive, "to_done", buggy)
    with caplog.at_level(logging.ERROR):
        assert not asyncio.run(archive.attempt(item, errors, bugs))
    assert bugs._value.get() == 1  # type: ignore[attr-defined]
    assert item.attempts == 1 and item.next_at > 0 and item.path.exists()
    [record] = [r for r in caplog.records if r.getMessage() == "internal_error"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


def test_a_bug_in_a_scanner_retry_does_not_end_the_scanner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors, bugs = _counters()
    backlog = archive.Backlog(errors, bugs)
    item = _pending(tmp_path)
    backlog.add(item)

    async def buggy_check(_item: archive.Pending) -> None:
        raise KeyError("injected")

    asyncio.run(backlog.retry_due(buggy_check))  # returns: the scanner goes on
    assert bugs._value.get() == 1  # type: ignore[attr-defined]
    assert backlog.holds("a.csv", identity(item.path)) and item.path.exists()
    item.next_at = 0.0
    asyncio.run(backlog.retry_due())  # the next retry moves it
    assert not item.path.exists() and len(backlog) == 0
