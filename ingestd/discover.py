"""Discover candidate files: regular files in the inbox that are not still being written."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".error.json")


def is_ignored(name: str) -> bool:
    """Dot-files and half-written names (*.tmp, *.part, *.partial) are never picked up."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def scan(
    inbox: Path,
    skip_dirs: tuple[Path, ...] = (),
    on_refused: Callable[[Path, str], None] | None = None,
    on_unreadable: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Every regular, non-ignored file under the inbox (subfolders too), in name order.

    Symlinks, FIFOs, sockets and devices are skipped without being opened, so a FIFO
    can never block the scan. A folder that cannot be listed is reported to
    `on_unreadable` with the reason; one that vanished meanwhile is not. Names that are
    not UTF-8 come back exact (os.scandir's surrogateescape).
    """
    skip = {p.resolve() for p in skip_dirs}
    stack = [inbox]
    while stack:
        folder = stack.pop()
        for entry in _listing(folder, on_unreadable):
            if is_ignored(entry.name):
                continue
            if entry.is_symlink():
                if on_refused is not None:
                    on_refused(Path(entry.path), "symbolic links are not followed")
            elif entry.is_dir(follow_symlinks=False):
                if Path(entry.path).resolve() not in skip:
                    stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)
            elif on_refused is not None:
                on_refused(Path(entry.path), "not a regular file (FIFO, socket or device)")


def _listing(
    folder: Path, on_unreadable: Callable[[Path, str], None] | None
) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []  # vanished since its parent was listed: nothing there to load
    except OSError as exc:
        if on_unreadable is not None:
            on_unreadable(folder, exc.strerror or str(exc))
        return []


def relative_name(path: Path, inbox: Path | None) -> PurePosixPath:
    """The name a file has in the manifest: relative to the inbox, else its absolute path."""
    if inbox is not None:
        try:
            return PurePosixPath(path.resolve().relative_to(inbox.resolve()).as_posix())
        except ValueError:
            pass
    return PurePosixPath(path.resolve().as_posix())


def identity(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file, or None if it is gone or not a regular file."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns)


def being_written(path: Path) -> bool:
    """True if another process has the file open for writing (Linux leases), else False.

    A read lease is refused while any writer holds the file open, which tells a slow
    writer that pauses longer than the settle interval from a finished file. Where
    leases are unavailable (other OS, NFS, not the file's owner) the settle interval
    alone decides.
    """
    lease = getattr(fcntl, "F_SETLEASE", None)
    if lease is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, lease, fcntl.F_RDLCK)
        fcntl.fcntl(fd, lease, fcntl.F_UNLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    finally:
        os.close(fd)
    return False


class Settler:
    """Files seen in the inbox, offered only once their size and mtime hold still for settle_s.

    A file that leaves before it settles (taken by another instance, renamed by its
    uploader) is forgotten and reported to `on_gone`, so that nothing counts it as waiting.
    """

    def __init__(
        self,
        settle_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_gone: Callable[[Path], None] | None = None,
        on_unreadable: Callable[[Path, str], None] | None = None,
    ):
        self._settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}
        self._on_gone = on_gone
        self._on_unreadable = on_unreadable

    def __contains__(self, path: object) -> bool:
        return path in self._seen

    def note(self, path: Path) -> None:
        """Remember a file (or every file under a new folder) to check later."""
        if path.is_dir() and not path.is_symlink():
            for child in scan(path, on_unreadable=self._on_unreadable):
                self.note(child)
            return
        if is_ignored(path.name):
            return
        now = identity(path)
        if now is None:
            self._forget(path)
        elif path not in self._seen or self._seen[path][0] != now:
            self._seen[path] = (now, self._clock())

    def _quiet(self, seen: tuple[int, int], since: float) -> bool:
        # Unchanged since we first saw it for settle_s, or last written at least settle_s ago
        # (a file renamed into the inbox keeps its mtime: no need to wait for it again).
        mtime_age_s = time.time() - seen[1] / 1e9
        return self._clock() - since >= self._settle_s or mtime_age_s >= self._settle_s

    def settled(self) -> list[Path]:
        """Files unchanged for settle_s and not open for writing; they are forgotten here."""
        ready = []
        for path, (seen, since) in list(self._seen.items()):
            now = identity(path)
            if now is None:
                self._forget(path)
            elif now != seen:
                self._seen[path] = (now, self._clock())
            elif self._quiet(now, since) and not being_written(path):
                del self._seen[path]
                ready.append(path)
        return ready

    def _forget(self, path: Path) -> None:
        self._seen.pop(path, None)
        if self._on_gone is not None:
            self._on_gone(path)
