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

    async def moved_first(path: Path, name: PurePosixPath, size: int | None = None) -> FileVersion:
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


def _scanner(inbox: Path) -> Scanner:
    settings = Settings(contracts=(Contract(name="c", pattern="*.csv", table="t"),), inbox=inbox)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    return Scanner(
        settings,
        None,  # type: ignore[arg-type]  # no pool: touching the database would be the bug
        Manifest(None, "m"),
        queue,
        Results(),
        Metrics(),
        "r",
        Backoff(),
    )


def test_a_file_that_leaves_before_it_is_offered_waits_no_more(tmp_path: Path) -> None:
    """The oldest-waiting gauge climbed for ever once such a file had been seen."""
    from ingestd.discover import Settler

    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    scanner = _scanner(inbox)
    settler = Settler(60.0, on_gone=scanner._gone)
    upload = inbox / "x.csv.uploading"
    upload.write_text("id\n1\n")
    stays = inbox / "sub" / "y.csv"
    stays.write_text("id\n2\n")
    scanner._rescan(settler)
    assert set(scanner.waiting) == {"x.csv.uploading", "sub/y.csv"}
    assert scanner.oldest_waiting() is not None

    os.rename(upload, tmp_path / "taken.csv")  # its uploader (or another instance) took it
    assert settler.settled() == []
    assert set(scanner.waiting) == {"sub/y.csv"}

    # Whatever way a file leaves, the next full scan drops it too.
    scanner.waiting["ghost.csv"] = 0.0
    stays.unlink()
    scanner._rescan(settler)
    assert scanner.waiting == {} and scanner.oldest_waiting() is None


def test_a_name_seen_but_never_tracked_is_not_waiting(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scanner = _scanner(inbox)
    from ingestd.discover import Settler

    settler = Settler(60.0, on_gone=scanner._gone)
    (inbox / ".hidden.csv.tmp").write_text("id\n1\n")
    scanner._note(settler, inbox / ".hidden.csv.tmp")  # an event for an ignored name
    scanner._note(settler, inbox / "absent.csv")
    assert scanner.waiting == {}


class _Watcher:
    """Stands in for the InboxWatcher: counts the restarts asked of it."""

    ok = True
    restarts = 0

    def restart(self) -> None:
        self.restarts += 1


def test_an_unreadable_folder_is_counted_and_watched_once_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "locked").mkdir(parents=True)
    (inbox / "locked" / "b.csv").write_text("id\n1\n")
    (inbox / "a.csv").write_text("id\n1\n")
    scanner = _scanner(inbox)
    watcher = _Watcher()
    scanner._watcher = watcher  # type: ignore[assignment]  # a fake: only restart() is used
    real_scandir = os.scandir
    denied = True

    def scandir(path: Any) -> Any:
        # chmod 000 does not stop root: the refusal is what the kernel tells anyone else.
        if denied and Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    gauge = scanner._metrics.unreadable_folders
    with caplog.at_level("INFO", logger="ingestd.scanner"):
        assert list(scanner.candidates()) == [inbox / "a.csv"]
        assert list(scanner.candidates()) == [inbox / "a.csv"]
        assert gauge._value.get() == 1
        denied = False
        assert sorted(scanner.candidates()) == [inbox / "a.csv", inbox / "locked" / "b.csv"]
    assert gauge._value.get() == 0
    events = [r.getMessage() for r in caplog.records]
    assert events == ["folder_unreadable", "folder_readable"]  # once each, not per scan
    assert watcher.restarts == 1
