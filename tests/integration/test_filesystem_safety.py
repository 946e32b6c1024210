"""Files outside the inbox are never read: symlinks swapped in, symlinked folders, daemon too."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import scanner
from ingestd.db.manifest import FileVersion
from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.pg import Db

SECRET_ROW = "id,v\n999,top-secret-row\n"  # noqa: S105 - test data


def test_a_file_swapped_for_a_symlink_before_hashing_is_refused(
    cli: Any, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "f.csv", "id,v\n1,a\n")
    secret = write(tmp_path / "outside" / "secret.csv", SECRET_ROW)
    real = scanner.file_version

    async def swap_then_hash(
        path: Path, name: PurePosixPath, size: int | None = None
    ) -> FileVersion:
        path.unlink()  # noqa: ASYNC240 - the race is the point
        path.symlink_to(secret)  # noqa: ASYNC240 - an attacker wins the race after discovery
        return await real(path, name, size)  # small: hashed inline, on the loop

    monkeypatch.setattr(scanner, "file_version", swap_then_hash)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert result.code == 1
    assert "cannot read file" in result.out
    assert "top-secret-row" not in result.out + result.err
    assert db.val("SELECT to_regclass('t')") is None  # nothing was loaded
    assert secret.read_text() == SECRET_ROW  # the target of the link is untouched
    moved = tmp_path / "failed" / "f.csv"
    assert moved.is_symlink()  # the link itself went to failed/, not what it points at


@pytest.fixture
def daemon(daemons: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    config = 'inbox = "inbox"\nsettle_s = 0.1\n[[contracts]]\npattern = "**"\ntable = "t"\n'
    config += 'pk = ["id"]\n'
    (tmp_path / "inbox").mkdir()
    return daemons(config, ready=False)  # the test sets up the inbox before it is ready


def test_daemon_never_loads_through_a_symlinked_folder(
    daemon: Daemon, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    outside = tmp_path / "outside"
    write(outside / "old.csv", SECRET_ROW)
    (inbox / "dirlink").symlink_to(outside, target_is_directory=True)
    (inbox / "filelink.csv").symlink_to(outside / "old.csv")
    daemon.wait_ready()
    # Files appearing behind the link while the daemon watches.
    write(outside / "new.csv", SECRET_ROW)
    write(outside / "sub" / "deep.csv", SECRET_ROW)
    os.utime(outside / "old.csv")
    # A normal file is the sync point: once it is loaded, the watcher has seen everything.
    write(inbox / ".good.csv.tmp", "id,v\n1,a\n").rename(inbox / "good.csv")
    wait_for(lambda: list((tmp_path / "done").rglob("good.csv")), 30, "good.csv loaded")
    wait_for(lambda: daemon.metric("ingest_queue_depth") == 0, 10, "an empty queue")
    assert daemon.stop() == 0
    assert db.fetch("SELECT id, v FROM t") == [{"id": "1", "v": "a"}]
    names = [r["filename"] for r in db.manifest()]
    assert names == ["good.csv"]
    for name in ("old.csv", "new.csv", "sub/deep.csv"):
        assert (outside / name).read_text() == SECRET_ROW  # not moved, not read
    assert str(outside) not in daemon.logs_text()  # never resolved, never named
    ignored = [e["file"] for e in daemon.events("file_ignored")]
    assert any("dirlink/" in f for f in ignored), ignored
