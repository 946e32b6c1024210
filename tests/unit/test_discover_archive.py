"""Discovering inbox files, and moving finished ones to done/ or failed/ without loss."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path, PurePosixPath

import pytest

from ingestd import archive
from ingestd.discover import identity, is_ignored, relative_name, scan


def touch(path: Path, text: str = "id\n1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(inbox: Path, skip_dirs: tuple[Path, ...] = ()) -> list[str]:
    return sorted(p.relative_to(inbox).as_posix() for p in scan(inbox, skip_dirs))


# --- is_ignored ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.csv",
        ".",
        "a.csv.tmp",
        "a.csv.part",
        "a.csv.partial",
        "A.CSV.TMP",
        "a.csv.error.json",
    ],
)
def test_ignored_names(name: str) -> None:
    assert is_ignored(name) is True


@pytest.mark.parametrize("name", ["a.csv", "a.parquet", "tmp.csv", "part", "a.json", "a.tmp.csv"])
def test_names_not_ignored(name: str) -> None:
    assert is_ignored(name) is False


# --- scan ---------------------------------------------------------------------------------


def test_scan_finds_regular_files_and_recurses(tmp_path: Path) -> None:
    touch(tmp_path / "a.csv")
    touch(tmp_path / "sub" / "b.csv")
    touch(tmp_path / "sub" / "deeper" / "c.parquet")
    assert names(tmp_path) == ["a.csv", "sub/b.csv", "sub/deeper/c.parquet"]


def test_scan_yields_paths_under_the_inbox(tmp_path: Path) -> None:
    f = touch(tmp_path / "a.csv")
    assert list(scan(tmp_path)) == [f]


def test_scan_skips_half_written_and_hidden_files(tmp_path: Path) -> None:
    touch(tmp_path / "keep.csv")
    for name in (".dot.csv", "x.csv.tmp", "x.csv.part", "x.csv.partial", "x.csv.error.json"):
        touch(tmp_path / name)
    touch(tmp_path / ".hidden_dir" / "inside.csv")
    assert names(tmp_path) == ["keep.csv"]


def test_scan_skips_symlinks(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    outside = touch(tmp_path / "outside" / "secret.csv")
    touch(inbox / "real.csv")
    (inbox / "link.csv").symlink_to(outside)
    (inbox / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    (inbox / "dangling.csv").symlink_to(tmp_path / "nothing")
    assert names(inbox) == ["real.csv"]


@pytest.mark.timeout(10)
def test_scan_skips_fifos_without_blocking(tmp_path: Path) -> None:
    touch(tmp_path / "real.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    assert names(tmp_path) == ["real.csv"]


def test_scan_skips_named_directories(tmp_path: Path) -> None:
    touch(tmp_path / "a.csv")
    touch(tmp_path / "done" / "2024-01-01" / "old.csv")
    touch(tmp_path / "failed" / "bad.csv")
    touch(tmp_path / "sub" / "b.csv")
    skip = (tmp_path / "done", tmp_path / "failed")
    assert names(tmp_path, skip) == ["a.csv", "sub/b.csv"]


def test_scan_skip_dirs_are_compared_resolved(tmp_path: Path) -> None:
    touch(tmp_path / "done" / "old.csv")
    touch(tmp_path / "a.csv")
    assert names(tmp_path, (tmp_path / "sub" / ".." / "done",)) == ["a.csv"]


def test_scan_of_a_missing_inbox_is_empty(tmp_path: Path) -> None:
    assert list(scan(tmp_path / "absent")) == []


def test_scan_order_within_a_folder_is_stable(tmp_path: Path) -> None:
    for name in ("c.csv", "a.csv", "b.csv"):
        touch(tmp_path / name)
    first = list(scan(tmp_path))
    assert first == list(scan(tmp_path))
    assert len(first) == 3


# --- relative_name and identity -----------------------------------------------------------


def test_relative_name_inside_the_inbox(tmp_path: Path) -> None:
    f = touch(tmp_path / "inbox" / "sub" / "a.csv")
    assert relative_name(f, tmp_path / "inbox") == PurePosixPath("sub/a.csv")


def test_relative_name_outside_the_inbox_is_absolute(tmp_path: Path) -> None:
    f = touch(tmp_path / "elsewhere" / "a.csv")
    rel = relative_name(f, tmp_path / "inbox")
    assert rel == PurePosixPath(f.resolve().as_posix())
    assert rel.is_absolute()


def test_relative_name_without_an_inbox(tmp_path: Path) -> None:
    f = touch(tmp_path / "a.csv")
    assert relative_name(f, None) == PurePosixPath(f.resolve().as_posix())


def test_identity(tmp_path: Path) -> None:
    f = touch(tmp_path / "a.csv", "12345")
    size, mtime_ns = identity(f) or (None, None)
    assert size == 5
    assert mtime_ns == f.stat().st_mtime_ns
    assert identity(tmp_path / "gone.csv") is None
    assert identity(tmp_path) is None
    os.mkfifo(tmp_path / "fifo")
    assert identity(tmp_path / "fifo") is None


# --- archive ------------------------------------------------------------------------------

DAY = dt.date(2024, 5, 6)


def test_to_done_moves_under_a_dated_folder(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "a.csv", "first")
    dest = archive.to_done(src, tmp_path / "done", PurePosixPath("a.csv"), DAY)
    assert dest == tmp_path / "done" / "2024-05-06" / "a.csv"
    assert dest.read_text() == "first"
    assert not src.exists()


def test_to_done_keeps_subfolders(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "sales" / "a.csv")
    dest = archive.to_done(src, tmp_path / "done", PurePosixPath("sales/a.csv"), DAY)
    assert dest == tmp_path / "done" / "2024-05-06" / "sales" / "a.csv"
    assert dest.is_file()


def test_to_done_defaults_to_today(tmp_path: Path) -> None:
    src = touch(tmp_path / "a.csv")
    dest = archive.to_done(src, tmp_path / "done", PurePosixPath("a.csv"))
    assert dest.parent.name == dt.date.today().isoformat()


def test_to_done_never_overwrites(tmp_path: Path) -> None:
    done = tmp_path / "done"
    first = archive.to_done(touch(tmp_path / "a.csv", "v1"), done, PurePosixPath("a.csv"), DAY)
    second = archive.to_done(touch(tmp_path / "a.csv", "v2"), done, PurePosixPath("a.csv"), DAY)
    third = archive.to_done(touch(tmp_path / "a.csv", "v3"), done, PurePosixPath("a.csv"), DAY)
    assert len({first, second, third}) == 3
    assert (first.read_text(), second.read_text(), third.read_text()) == ("v1", "v2", "v3")
    assert sorted(p.name for p in (done / "2024-05-06").iterdir()) == [
        "a.1.csv",
        "a.2.csv",
        "a.csv",
    ]


@pytest.mark.parametrize(
    ("name", "renamed"),
    [("a.csv.gz", "a.1.csv.gz"), ("README", "README.1"), ("x.parquet", "x.1.parquet")],
)
def test_new_names_keep_the_full_suffix(tmp_path: Path, name: str, renamed: str) -> None:
    done = tmp_path / "done"
    archive.to_done(touch(tmp_path / name, "v1"), done, PurePosixPath(name), DAY)
    second = archive.to_done(touch(tmp_path / name, "v2"), done, PurePosixPath(name), DAY)
    assert second.name == renamed
    assert second.read_text() == "v2"


def test_to_failed_writes_a_sidecar(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "bad.csv", "broken")
    report = {"file": "bad.csv", "error": "line 3 has 1 fields", "row": 3, "when": DAY}
    dest = archive.to_failed(src, tmp_path / "failed", PurePosixPath("bad.csv"), report)
    assert dest == tmp_path / "failed" / "bad.csv"
    assert dest.read_text() == "broken"
    assert not src.exists()
    sidecar = tmp_path / "failed" / "bad.csv.error.json"
    loaded = json.loads(sidecar.read_text())
    assert loaded == {
        "file": "bad.csv",
        "error": "line 3 has 1 fields",
        "row": 3,
        "when": "2024-05-06",
    }


def test_to_failed_twice_keeps_both_files_and_reports(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    one = archive.to_failed(
        touch(tmp_path / "b.csv", "v1"), failed, PurePosixPath("sub/b.csv"), {"n": 1}
    )
    two = archive.to_failed(
        touch(tmp_path / "b.csv", "v2"), failed, PurePosixPath("sub/b.csv"), {"n": 2}
    )
    assert one == failed / "sub" / "b.csv"
    assert two == failed / "sub" / "b.1.csv"
    assert (one.read_text(), two.read_text()) == ("v1", "v2")
    assert json.loads((failed / "sub" / "b.csv.error.json").read_text()) == {"n": 1}
    assert json.loads((failed / "sub" / "b.1.csv.error.json").read_text()) == {"n": 2}
