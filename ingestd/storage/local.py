"""Local folders: the inbox is a directory tree; entries are regular files, named by path.

Files are written in place, so a file is complete only once it holds still and no writer
has it open (local_settle.py); the watcher (ingestd/watcher.py) only makes discovery
prompt. Names are bytes on disk: os.scandir's surrogateescape keeps them exact.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa

from ingestd.storage import local_moves
from ingestd.storage.base import Handle, Version, is_ignored

# /proc/self/fd/N opens the very file a descriptor holds (no name lookup again): a C++
# file for pyarrow from a descriptor opened safely. Linux; elsewhere a Python file.
_PROC_FD = Path("/proc/self/fd")


class LocalStorage:
    """A landing area on a mounted file system (one host, or a shared mount)."""

    settles = True

    def __init__(self, inbox: Path | None, done: Path | None, failed: Path | None):
        self.inbox = inbox
        self.done = done
        self.failed = failed
        # The inbox resolved once, at the first name asked (it exists by then): resolving
        # it for every name was a path walk per file, the bulk of naming a small file.
        self._root: Path | None = None

    def describe(self) -> str:
        return str(self.inbox) if self.inbox is not None else "local files"

    def problem(self) -> str | None:
        if self.inbox is None:
            return None
        return inbox_problem(self.inbox)[1]

    def skip_dirs(self) -> tuple[Path, ...]:
        """done/ and failed/, never listed even when they lie inside the inbox's tree."""
        return tuple(p for p in (self.done, self.failed) if p is not None)

    def entries(
        self,
        on_refused: Callable[[Handle, str], None] | None = None,
        on_unreadable: Callable[[Handle, str], None] | None = None,
    ) -> Iterator[Path]:
        if self.inbox is None:
            return iter(())
        return scan(self.inbox, self.skip_dirs(), on_refused, on_unreadable)

    def name_of(self, handle: Handle) -> PurePosixPath:
        if self.inbox is not None and self._root is None:
            self._root = self.inbox.resolve()
        return relative_name(_path(handle), self._root, resolved=True)

    def identity(self, handle: Handle) -> Version | None:
        return identity(_path(handle))

    def open_stream(self, handle: Handle) -> pa.NativeFile:
        return open_regular(_path(handle))

    def open_random(self, handle: Handle) -> pa.NativeFile:
        return open_regular(_path(handle))

    def to_done(self, handle: Handle, name: PurePosixPath, today: dt.date | None = None) -> str:
        if self.done is None:
            raise OSError(errno.EINVAL, "no done directory configured")
        return str(local_moves.to_done(_path(handle), self.done, name, today))

    def to_failed(self, handle: Handle, name: PurePosixPath, sidecar: bytes) -> str:
        if self.failed is None:
            raise OSError(errno.EINVAL, "no failed directory configured")
        return str(local_moves.to_failed(_path(handle), self.failed, name, sidecar))

    def delete(self, handle: Handle) -> None:
        _path(handle).unlink(missing_ok=True)


def _path(handle: Handle) -> Path:
    if not isinstance(handle, Path):
        raise TypeError(f"a local folder was given a {type(handle).__name__}, not a path")
    return handle


def open_regular(path: Path) -> pa.NativeFile:
    """A random-access pyarrow file of a regular file. Never follows a symlink swapped in
    after discovery, never blocks on a FIFO (OSError instead)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        try:
            return pa.OSFile(str(_PROC_FD / str(fd)))
        except OSError:  # no /proc: the descriptor itself, through Python
            file = pa.PythonFile(os.fdopen(fd, "rb"), mode="r")
            fd = -1  # the Python file owns it now
            return file
    finally:
        if fd >= 0:
            os.close(fd)


def sha256_of(file: pa.NativeFile, piece_bytes: int = 1 << 20) -> tuple[bytes, int]:
    """Streaming sha256 and size of what `file` reads (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    size = 0
    with file:
        while piece := file.read(piece_bytes):
            digest.update(piece)
            size += len(piece)
    return digest.digest(), size


def inbox_problem(inbox: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(device and inode of the inbox, None), or (None, why ingestd cannot use it now)."""
    try:
        st = os.stat(inbox)
    except FileNotFoundError:
        return None, "it does not exist"
    except OSError as exc:
        return None, f"cannot reach it: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return None, "it is not a directory"
    try:
        with os.scandir(inbox):
            pass
    except OSError as exc:
        return None, f"cannot list it: {exc.strerror}"
    return (st.st_dev, st.st_ino), None


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


def relative_name(path: Path, inbox: Path | None, *, resolved: bool = False) -> PurePosixPath:
    """The name a file has in the manifest: relative to the inbox, else its absolute path
    (`resolved`: the inbox is resolved already)."""
    real = path.resolve()
    if inbox is not None:
        try:
            return PurePosixPath(
                real.relative_to(inbox if resolved else inbox.resolve()).as_posix()
            )
        except ValueError:
            pass
    return PurePosixPath(real.as_posix())


def identity(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a regular file, or None if it is gone or not a regular
    file. The inode catches a replacement of the same size with its mtime set back
    (`rsync -t`, a temporary file renamed over it): size and mtime alone let one load under
    the checksum of the bytes claimed. Not the ctime: ingestd's own link and rename of a
    file whose move failed change it, and the move's retry must see the same version."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)
