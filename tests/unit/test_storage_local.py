"""The local folder behind the storage interface: what only a file system has (symlinks,
FIFOs, bytes for names), and how the settings choose a storage."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from ingestd.exceptions import UsageError
from ingestd.settings import Contract, Settings
from ingestd.storage import (
    BoundSource,
    LocalStorage,
    is_url,
    open_bytes,
    open_ranged,
    resolve,
    source_of,
    storage_for,
)
from ingestd.storage.base import is_ignored, size_of


def _area(tmp_path: Path) -> LocalStorage:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return LocalStorage(inbox, tmp_path / "done", tmp_path / "failed")


def test_symlinks_and_fifos_are_refused_not_listed(tmp_path: Path) -> None:
    storage = _area(tmp_path)
    inbox = storage.inbox
    assert inbox is not None
    (tmp_path / "secret.csv").write_text("id\n1\n")
    (inbox / "link.csv").symlink_to(tmp_path / "secret.csv")
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "ok.csv").write_text("id\n1\n")
    refused: list[tuple[str, str]] = []
    listed = list(storage.entries(lambda h, why: refused.append((h.name, why))))
    assert listed == [inbox / "ok.csv"]
    assert sorted(name for name, _ in refused) == ["link.csv", "pipe.csv"]


def test_done_and_failed_inside_the_tree_are_never_listed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "done" / "2026-01-01").mkdir(parents=True)
    (root / "failed").mkdir()
    (root / "done" / "2026-01-01" / "old.csv").write_text("id\n1\n")
    (root / "failed" / "bad.csv").write_text("id\n1\n")
    (root / "new.csv").write_text("id\n1\n")
    storage = LocalStorage(root, root / "done", root / "failed")
    assert [storage.name_of(h) for h in storage.entries()] == [PurePosixPath("new.csv")]


def test_a_name_that_is_not_utf8_is_listed_and_read_exactly(tmp_path: Path) -> None:
    storage = _area(tmp_path)
    assert storage.inbox is not None
    raw = os.fsencode(storage.inbox) + b"/caf\xe9.csv"
    with open(raw, "wb") as fh:
        fh.write(b"id\n1\n")
    [handle] = list(storage.entries())
    assert os.fsencode(handle) == raw
    with storage.open_stream(handle) as stream:
        assert stream.read() == b"id\n1\n"


def test_opening_refuses_a_symlink_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "target.csv").write_text("id\n1\n")
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "target.csv")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    storage = LocalStorage(None, None, None)
    with pytest.raises(OSError) as caught:
        storage.open_stream(link)
    assert caught.value.errno == errno.ELOOP
    done = threading.Event()
    errors: list[BaseException] = []

    def open_fifo() -> None:
        try:
            storage.open_random(fifo)
        except OSError as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=open_fifo, daemon=True).start()
    assert done.wait(10), "opening a FIFO blocked"
    assert errors and isinstance(errors[0], OSError)


def test_identity_is_size_mtime_and_inode_of_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"id\n1\n")
    storage = LocalStorage(None, None, None)
    version = storage.identity(f)
    st = f.stat()
    assert version == (5, st.st_mtime_ns, st.st_ino) and size_of(version) == 5
    assert storage.identity(tmp_path / "gone.csv") is None
    assert storage.identity(tmp_path) is None  # a folder is not an entry


def test_names_outside_the_inbox_are_absolute(tmp_path: Path) -> None:
    storage = _area(tmp_path)
    elsewhere = tmp_path / "elsewhere.csv"
    assert storage.name_of(elsewhere) == PurePosixPath(elsewhere.resolve().as_posix())
    assert LocalStorage(None, None, None).name_of(elsewhere).is_absolute()


def test_moves_need_their_folder(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("id\n1\n")
    with pytest.raises(OSError):
        LocalStorage(None, None, None).to_done(f, PurePosixPath("a.csv"))
    with pytest.raises(OSError):
        LocalStorage(None, None, None).to_failed(f, PurePosixPath("a.csv"), b"{}")
    assert f.exists()


def test_problem_says_why_the_inbox_cannot_be_used(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "missing", None, None).problem() == "it does not exist"
    (tmp_path / "file").write_text("")
    assert LocalStorage(tmp_path / "file", None, None).problem() == "it is not a directory"
    assert LocalStorage(tmp_path, None, None).problem() is None
    assert LocalStorage(None, None, None).problem() is None  # --files: no inbox


def test_a_path_resolves_to_the_local_storage_and_others_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"id\n1\n")
    assert isinstance(resolve(f), LocalStorage)
    with pytest.raises(TypeError):
        resolve("a.csv")  # type: ignore[arg-type]  # a string is not a handle
    with open_bytes(f) as stream, open_ranged(f) as ranged:
        assert stream.read() == b"id\n1\n" and ranged.read_at(1, 3) == b"1"
    bound = source_of(f)
    assert isinstance(bound, BoundSource) and bound.name == "a.csv"
    assert source_of(bound) is bound  # a source passes through


def test_the_settings_choose_a_local_folder_with_done_and_failed_beside_it(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    storage = storage_for(Settings(inbox=inbox, contracts=(Contract(name="c", table="t"),)))
    assert isinstance(storage, LocalStorage)
    assert (storage.inbox, storage.done, storage.failed) == (
        inbox,
        tmp_path / "done",
        tmp_path / "failed",
    )
    assert storage.describe() == str(inbox)
    files = storage_for(Settings(contracts=(), files=(tmp_path / "x.csv",), inbox=inbox))
    # --files: a file's manifest name is its absolute path, as before the storage layer.
    assert files.name_of(tmp_path / "x.csv").is_absolute()


def test_urls_are_told_from_paths() -> None:
    assert is_url("s3://bucket/in/") and is_url("gs://b/p")
    assert not is_url("/srv/inbox") and not is_url(Path("/srv")) and not is_url("s3:/b")


def test_an_object_store_without_its_module_is_one_readable_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    real = importlib.import_module

    def without_s3(name: str, package: str | None = None) -> object:
        if name == "ingestd.storage.s3":
            raise ImportError("No module named 'obstore'", name="obstore")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_s3)
    with pytest.raises(UsageError, match="object storage is not available"):
        storage_for(Settings(contracts=(), inbox="s3://bucket/in/"))


def test_every_storage_ignores_the_same_names() -> None:
    for name in (".x.csv", "a.tmp", "a.csv.part", "a.PARTIAL", "a.csv.error.json"):
        assert is_ignored(name)
    assert not is_ignored("a.csv") and not is_ignored("a.parquet")


def test_without_proc_a_file_is_read_through_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestd.storage import local

    monkeypatch.setattr(local, "_PROC_FD", tmp_path / "no-proc")
    f = tmp_path / "a.csv"
    f.write_bytes(b"id\n1\n2\n")
    with local.open_regular(f) as opened:
        assert opened.read() == b"id\n1\n2\n"
        assert opened.size() == 7 and opened.read_at(2, 3) == b"1\n"
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):  # every descriptor is closed again, whichever way it was opened
        local.open_regular(f).close()
        with pytest.raises(OSError):
            local.open_regular(tmp_path)  # a folder: refused, its descriptor closed
    assert len(os.listdir("/proc/self/fd")) <= fds + 1
