"""Local files are written in place: complete once they hold still for settle_s and no
writer has them open (Linux leases tell a writer that pauses from a finished file)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from ingestd.storage.base import is_ignored
from ingestd.storage.local import identity, scan


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
        self._seen: dict[Path, tuple[tuple[int, int, int], float]] = {}
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

    def _quiet(self, seen: tuple[int, int, int], since: float) -> bool:
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
