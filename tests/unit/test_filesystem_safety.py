"""Only regular files inside the inbox are read; archiving never writes outside its folders."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from ingestd import archive
from ingestd.claim import sha256_file
from ingestd.config import resolve
from ingestd.discover import Settler, identity, relative_name, scan
from ingestd.exceptions import UsageError
from tests.helpers import touch


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = tmp_path / "outside"
    touch(outside / "secret.csv", "id\nsecret\n")
    return inbox, outside


def test_scan_reads_no_symlink_to_a_file_or_folder(layout: tuple[Path, Path]) -> None:
    inbox, outside = layout
    touch(inbox / "real.csv")
    (inbox / "out.csv").symlink_to(outside / "secret.csv")
    (inbox / "in.csv").symlink_to(inbox / "real.csv")
    (inbox / "dirlink").symlink_to(outside, target_is_directory=True)
    (inbox / "loop").symlink_to(inbox, target_is_directory=True)
    found = sorted(p.relative_to(inbox).as_posix() for p in scan(inbox))
    assert found == ["real.csv"]


def test_settler_never_offers_a_symlink(layout: tuple[Path, Path]) -> None:
    inbox, outside = layout
    (inbox / "out.csv").symlink_to(outside / "secret.csv")
    (inbox / "dirlink").symlink_to(outside, target_is_directory=True)
    settler = Settler(0.0)
    settler.note(inbox / "out.csv")
    settler.note(inbox / "dirlink")
    assert settler.settled() == []
    assert identity(inbox / "out.csv") is None


def test_a_path_resolving_outside_the_inbox_gets_an_absolute_name(
    layout: tuple[Path, Path],
) -> None:
    inbox, outside = layout
    (inbox / "dirlink").symlink_to(outside, target_is_directory=True)
    name = relative_name(inbox / "dirlink" / "secret.csv", inbox)
    assert name.is_absolute()  # never a name under the inbox; archive refuses it (below)


@pytest.mark.parametrize("pattern", ["../*.csv", "a/../../*.csv", "/etc/*", "..", ""])
def test_patterns_must_stay_inside_the_inbox(tmp_path: Path, pattern: str) -> None:
    config = {"contracts": [{"name": "c", "table": "t", "pattern": pattern, "mode": "append"}]}
    with pytest.raises(UsageError, match="pattern"):
        resolve({"inbox": str(tmp_path)}, env={}, config=config)


# --- archive: done/ and failed/ keep their files inside --------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../escaped.csv", "../../escaped.csv", "a/../../escaped.csv", "/tmp/escaped.csv", ".."],  # noqa: S108,
)
def test_archive_refuses_names_that_would_leave_its_folder(tmp_path: Path, name: str) -> None:
    src = touch(tmp_path / "inbox" / "f.csv")
    done, failed = tmp_path / "arch" / "done", tmp_path / "arch" / "failed"
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(OSError, match="outside the archive directory"):
        archive.to_done(src, done, PurePosixPath(name))
    with pytest.raises(OSError, match="outside the archive directory"):
        archive.to_failed(src, failed, PurePosixPath(name), {"reason": "x"})
    assert src.exists()
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_archive_refuses_a_symlinked_subfolder_leading_out(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "sub" / "f.csv")
    failed = tmp_path / "failed"
    failed.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (failed / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OSError, match="outside the archive directory"):
        archive.to_failed(src, failed, PurePosixPath("sub/f.csv"), {"reason": "x"})
    assert list(elsewhere.iterdir()) == []


def test_archive_still_keeps_subfolders(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "a" / "b.csv")
    dest = archive.to_failed(src, tmp_path / "failed", PurePosixPath("a/b.csv"), {"r": 1})
    assert dest == tmp_path / "failed" / "a" / "b.csv"
    assert (tmp_path / "failed" / "a" / "b.csv.error.json").exists()


# --- hashing opens the file without following links ------------------------------------------


def test_sha256_refuses_a_symlink_swapped_in(layout: tuple[Path, Path]) -> None:
    inbox, outside = layout
    path = touch(inbox / "f.csv")
    assert [p.name for p in scan(inbox)] == ["f.csv"]  # discovered as a regular file
    path.unlink()
    path.symlink_to(outside / "secret.csv")  # swapped before hashing
    with pytest.raises(OSError):
        sha256_file(path)


def test_sha256_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        sha256_file(fifo)


def test_sha256_of_a_regular_file(tmp_path: Path) -> None:
    import hashlib

    path = touch(tmp_path / "f.csv", "id\n1\n")
    assert sha256_file(path) == (hashlib.sha256(b"id\n1\n").digest(), 5)
