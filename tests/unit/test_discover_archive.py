"""Discovering inbox files, and moving finished ones to done/ or failed/ without loss."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import archive
from ingestd.discover import Settler, identity, is_ignored, relative_name, scan
from tests.helpers import touch


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


def test_scan_keeps_names_that_are_not_utf8_exact(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.csv"
    with open(raw, "wb") as fh:
        fh.write(b"id\n1\n")
    os.mkdir(os.fsencode(tmp_path) + b"/d\xe9")
    with open(os.fsencode(tmp_path) + b"/d\xe9/x.csv", "wb") as fh:
        fh.write(b"id\n1\n")
    found = [os.fsencode(p) for p in scan(tmp_path)]
    assert sorted(found) == sorted([raw, os.fsencode(tmp_path) + b"/d\xe9/x.csv"])


def test_scan_reports_a_folder_it_cannot_list_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path / "open" / "a.csv")
    touch(tmp_path / "locked" / "b.csv")
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        # chmod 000 does not stop root: the refusal is what the kernel says to others.
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    reported: list[tuple[Path, str]] = []
    assert names(tmp_path) == ["open/a.csv"]
    found = list(scan(tmp_path, on_unreadable=lambda f, why: reported.append((f, why))))
    assert found == [tmp_path / "open" / "a.csv"]
    assert reported == [(tmp_path / "locked", "Permission denied")]


def test_settler_reports_a_file_that_leaves_before_it_settles(tmp_path: Path) -> None:
    gone: list[Path] = []
    settler = Settler(60.0, on_gone=gone.append)
    f = touch(tmp_path / "x.csv.uploading")
    settler.note(f)
    assert f in settler
    os.rename(f, tmp_path / "x.csv")
    assert settler.settled() == []
    assert f not in settler and gone == [f]


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
    st = f.stat()
    assert identity(f) == (5, st.st_mtime_ns, st.st_ino)
    os.replace(touch(tmp_path / "b.csv", "67890"), f)  # same size: another inode
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity(f) != (5, st.st_mtime_ns, st.st_ino)
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


# --- archive: hostile names and volumes ---------------------------------------------------

LONG = "a" * 251 + ".csv"  # 255 bytes: the longest name Linux allows


def leftovers(folder: Path) -> list[str]:
    """Temporary files a move left behind."""
    return sorted(p.name for p in folder.rglob(archive.TEMP_PREFIX + "*"))


def test_a_255_byte_failed_name_keeps_its_extension_and_its_sidecar(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    one = archive.to_failed(touch(tmp_path / LONG, "v1"), failed, PurePosixPath(LONG), {"n": 1})
    two = archive.to_failed(touch(tmp_path / LONG, "v2"), failed, PurePosixPath(LONG), {"n": 2})
    assert one != two
    for dest, n in ((one, 1), (two, 2)):
        sidecar = dest.with_name(dest.name + archive.SIDECAR_SUFFIX)
        assert len(sidecar.name.encode()) <= 255
        assert dest.name.startswith("a" * 200) and dest.name.endswith(".csv")
        assert json.loads(sidecar.read_text()) == {"n": n}
    assert (one.read_text(), two.read_text()) == ("v1", "v2")
    assert not (tmp_path / LONG).exists()
    assert len(list(failed.iterdir())) == 4
    # Deterministic: the same name always shortens the same way.
    assert one.name == archive.fit_name(LONG, 0, len(archive.SIDECAR_SUFFIX), 255)


def test_a_second_version_of_a_255_byte_name_gets_a_numbered_shortened_name(
    tmp_path: Path,
) -> None:
    done = tmp_path / "done"
    first = archive.to_done(touch(tmp_path / LONG, "v1"), done, PurePosixPath(LONG), DAY)
    second = archive.to_done(touch(tmp_path / LONG, "v2"), done, PurePosixPath(LONG), DAY)
    assert first.name == LONG  # fits as it is: kept exact
    assert second.name != LONG and second.name.endswith(".1.csv")
    assert len(second.name.encode()) <= 255
    assert (first.read_text(), second.read_text()) == ("v1", "v2")


def test_fit_name_keeps_names_that_fit_and_cuts_on_a_character_boundary() -> None:
    assert archive.fit_name("a.csv.gz", 0, 11, 255) == "a.csv.gz"
    assert archive.fit_name("a.csv.gz", 3, 11, 255) == "a.3.csv.gz"
    accented = "é" * 127 + ".csv.gz"  # 261 bytes
    short = archive.fit_name(accented, 0, 11, 255)
    assert len(short.encode()) <= 255 - 11
    assert short.endswith(".csv.gz") and "~" in short
    short.encode("utf-8")  # still valid UTF-8: no character cut in half
    assert archive.fit_name(accented, 1, 11, 255) != short


def test_a_move_across_file_systems_copies_then_leaves_no_temp(tmp_path: Path) -> None:
    from tests.mounts import tmpfs

    with tmpfs(tmp_path / "inbox", "1m") as inbox:
        src = touch(inbox / "x.csv", "id\n1\n" * 1000)
        dest = archive.to_done(src, tmp_path / "done", PurePosixPath("x.csv"), DAY)
        assert dest.read_text() == "id\n1\n" * 1000
        assert not src.exists()
        assert leftovers(tmp_path / "done") == []


def test_a_full_done_volume_leaves_no_partial_copy(tmp_path: Path) -> None:
    from tests.mounts import tmpfs

    src = touch(tmp_path / "inbox" / "big.csv", "id,v\n" + "1,xxxxxxxxxxxxxxxx\n" * 20_000)
    with tmpfs(tmp_path / "done", "64k") as done:
        for _ in range(3):
            with pytest.raises(OSError) as caught:
                archive.to_done(src, done, PurePosixPath("big.csv"), DAY)
            assert archive.reason_of(caught.value) == "no_space"
        assert [p for p in done.rglob("*") if p.is_file()] == []
    assert src.stat().st_size > 300_000  # the original is untouched


def test_an_immutable_failed_folder_leaves_the_file_in_place(tmp_path: Path) -> None:
    from tests.mounts import immutable

    src = touch(tmp_path / "inbox" / "bad.csv", "broken")
    with immutable(tmp_path / "failed") as failed:
        with pytest.raises(OSError) as caught:
            archive.to_failed(src, failed, PurePosixPath("bad.csv"), {"n": 1})
        assert archive.reason_of(caught.value) == "permission"
        assert list(failed.iterdir()) == []
    assert src.read_text() == "broken"


def test_a_read_only_done_folder_is_reported_as_such(tmp_path: Path) -> None:
    from tests.mounts import read_only_bind

    src = touch(tmp_path / "inbox" / "a.csv")
    (tmp_path / "done" / DAY.isoformat()).mkdir(parents=True)
    with read_only_bind(tmp_path / "done") as done:
        with pytest.raises(OSError) as caught:
            archive.to_done(src, done, PurePosixPath("a.csv"), DAY)
        assert archive.reason_of(caught.value) == "read_only"
    assert src.exists()
    assert list((tmp_path / "done" / DAY.isoformat()).iterdir()) == []


def test_an_inbox_that_cannot_let_go_leaves_no_copy_in_done(tmp_path: Path) -> None:
    from tests.mounts import immutable

    src = touch(tmp_path / "inbox" / "a.csv")
    with immutable(tmp_path / "inbox"):
        with pytest.raises(OSError):
            archive.to_done(src, tmp_path / "done", PurePosixPath("a.csv"), DAY)
    assert src.exists()
    assert list((tmp_path / "done" / DAY.isoformat()).iterdir()) == []


def test_the_same_bytes_dropped_again_are_not_archived_twice(tmp_path: Path) -> None:
    done = tmp_path / "done"
    first = archive.to_done(touch(tmp_path / "a.csv", "same"), done, PurePosixPath("a.csv"), DAY)
    again = archive.to_done(touch(tmp_path / "a.csv", "same"), done, PurePosixPath("a.csv"), DAY)
    assert again == first
    assert not (tmp_path / "a.csv").exists()
    assert [p.name for p in (done / DAY.isoformat()).iterdir()] == ["a.csv"]


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [archive.retry_delay_s(n) for n in range(1, 20)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays)
    assert max(delays) == archive.RETRY_CAP_S


def test_the_backlog_lets_go_of_a_file_that_changed(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter

    errors = Counter("e", "e", ["folder", "reason"], registry=CollectorRegistry())
    backlog = archive.Backlog(errors)
    src = touch(tmp_path / "a.csv", "v1")
    backlog.add(archive.Pending(src, PurePosixPath("a.csv"), "done", tmp_path / "done",
                                identity=identity(src)))  # fmt: skip
    assert backlog.holds("a.csv", identity(src))
    assert len(backlog) == 1
    touch(src, "version two")
    assert not backlog.holds("a.csv", identity(src))
    assert len(backlog) == 0


def test_a_full_failed_volume_leaves_neither_file_nor_sidecar(tmp_path: Path) -> None:
    from tests.mounts import tmpfs

    src = touch(tmp_path / "inbox" / "bad.csv", "x" * 200_000)
    with tmpfs(tmp_path / "failed", "64k") as failed:
        with pytest.raises(OSError) as caught:
            archive.to_failed(src, failed, PurePosixPath("bad.csv"), {"reason": "r" * 1000})
        assert archive.reason_of(caught.value) == "no_space"
        assert list(failed.iterdir()) == []
    assert src.stat().st_size == 200_000


def test_a_failed_file_across_file_systems_arrives_with_its_sidecar(tmp_path: Path) -> None:
    from tests.mounts import tmpfs

    src = touch(tmp_path / "inbox" / "bad.csv", "broken")
    with tmpfs(tmp_path / "failed", "1m") as failed:
        dest = archive.to_failed(src, failed, PurePosixPath("bad.csv"), {"n": 1})
        assert sorted(p.name for p in failed.iterdir()) == ["bad.csv", "bad.csv.error.json"]
        assert dest.read_text() == "broken"
        assert json.loads((failed / "bad.csv.error.json").read_text()) == {"n": 1}
    assert not src.exists()


def _as_nobody(base: Path, code: str) -> str:
    """Run python code as the user nobody in `base` (made for it); its stdout."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the move as another user")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", "from pathlib import Path, PurePosixPath\n"
         "from ingestd import archive\n" + code],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(archive.__file__).parents[1],
    )  # fmt: skip
    if "No module named" in done.stderr or "Permission denied: '" in done.stderr:
        pytest.skip(f"nobody cannot run this checkout's python: {done.stderr[-200:]}")
    assert not done.stderr, done.stderr
    return done.stdout.strip()


@pytest.fixture
def nobody_base() -> Iterator[Path]:
    """A folder outside tmp_path (which nobody cannot enter), owned by nobody."""
    import shutil

    base = Path(f"/tmp/ingestd-perm-{os.getpid()}")  # noqa: S108 - see the docstring
    base.mkdir(mode=0o755)
    os.chown(base, 65534, 65534)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _nobody_dirs(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir()
        os.chown(base / name, 65534, 65534)


def test_a_done_folder_without_write_permission(nobody_base: Path) -> None:
    """chmod only stops a user that is not root: the move runs as nobody."""
    _nobody_dirs(nobody_base, "inbox", "done")
    src = touch(nobody_base / "inbox" / "a.csv")
    os.chown(src, 65534, 65534)
    (nobody_base / "done").chmod(0o555)
    code = (
        "try:\n"
        f"    archive.to_done(Path('{src}'), Path('{nobody_base}/done'), PurePosixPath('a.csv'))\n"
        "except OSError as e:\n"
        "    print(archive.reason_of(e))\n"
    )
    assert _as_nobody(nobody_base, code) == "permission"
    assert src.exists()
    assert list((nobody_base / "done").iterdir()) == []


def test_a_file_the_user_cannot_read_still_moves_to_failed(nobody_base: Path) -> None:
    """protected_hardlinks refuses to link it; a rename needs only the folders."""
    _nobody_dirs(nobody_base, "inbox", "failed")
    src = touch(nobody_base / "inbox" / "secret.csv", "id\n1\n")
    src.chmod(0o600)  # root's, unreadable to nobody
    code = (
        f"d = archive.to_failed(Path('{src}'), Path('{nobody_base}/failed'), "
        "PurePosixPath('secret.csv'), {'reason': 'cannot read file'})\n"
        "print(d.name)\n"
    )
    assert _as_nobody(nobody_base, code) == "secret.csv"
    assert not src.exists()
    failed = nobody_base / "failed"
    assert sorted(p.name for p in failed.iterdir()) == ["secret.csv", "secret.csv.error.json"]
    assert (failed / "secret.csv").stat().st_uid == 0  # the same file, moved
