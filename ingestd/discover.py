"""Discover candidate files: regular files in the inbox that are not still being written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".error.json")


def is_ignored(name: str) -> bool:
    """Dot-files and half-written names (*.tmp, *.part, *.partial) are never picked up."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def scan(inbox: Path, skip_dirs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Every regular, non-ignored file under the inbox (subfolders too), oldest first per folder.

    Symlinks, FIFOs, sockets and devices are skipped without being opened, so a FIFO
    can never block the scan.
    """
    skip = {p.resolve() for p in skip_dirs}
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # vanished or unreadable: the next scan will tell
        for entry in entries:
            if is_ignored(entry.name) or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if Path(entry.path).resolve() not in skip:
                    stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)


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
