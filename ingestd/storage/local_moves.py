"""Local moves out of the inbox: a file appears under its final name in one step (a hard
link on the same file system, else a copy to a temporary name in the destination folder,
fsync'd, then linked into place), the sidecar is in place before its file, and the inbox
copy goes last. Nothing is left behind by a move that cannot complete.
"""

from __future__ import annotations

import datetime as dt
import errno
import filecmp
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

SIDECAR_SUFFIX = ".error.json"
TEMP_PREFIX = ".ingestd-"  # a dot-file: never discovered, even in a folder that is watched
TEMP_SUFFIX = ".tmp"

_MAX_CLASHES = 100_000
_HASH_CHARS = 8
# The extension kept when a long name is shortened: up to two short suffixes (.csv.gz).
_EXTENSION = re.compile(rb"(\.[A-Za-z0-9_-]{1,10}){1,2}$")
# Link errors that mean "no hard link here" (another file system, a bind mount, no links
# on this file system, protected_hardlinks): copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


# --- names --------------------------------------------------------------------------------


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def fit_name(name: str, n: int, reserve: int, name_max: int) -> str:
    """The n-th candidate name for `name` (n = 0: itself; else a.N.csv), shortened if it
    and `reserve` more bytes (a sidecar suffix) would not fit in `name_max` bytes.

    Shortening is deterministic: the stem is cut (on a character boundary), then comes `~`,
    a short hash of the whole original name, the clash number and the extension.
    """
    stem, dot, suffix = name.partition(".")
    candidate = f"{stem}.{n}.{suffix}" if n and dot else f"{name}.{n}" if n else name
    if len(os.fsencode(candidate)) + reserve <= name_max:
        return candidate
    raw = os.fsencode(name)
    found = _EXTENSION.search(raw[1:])  # a leading dot is not an extension
    ext = found.group(0) if found else b""
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:_HASH_CHARS].encode()
    number = f".{n}".encode() if n else b""
    room = max(1, name_max - reserve - len(tag) - len(number) - len(ext))
    head = raw[: len(raw) - len(ext)][:room]
    while head and 0x80 <= head[-1] < 0xC0:  # never cut inside a UTF-8 character
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return os.fsdecode(head + tag + number + ext)


def _candidates(dest: Path, reserve: int) -> Iterator[Path]:
    name_max = _name_max(dest.parent)
    for n in range(_MAX_CLASHES):
        yield dest.with_name(fit_name(dest.name, n, reserve, name_max))
    raise FileExistsError(errno.EEXIST, "no free name left", str(dest))


# --- placing a file -----------------------------------------------------------------------


def _temp_path(folder: Path) -> Path:
    return folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _write_temp(folder: Path, fill: Any, mode: int = 0o644) -> Path:
    """A new file in `folder` under a temporary name, written by fill(fh) and fsync'd;
    removed again if anything fails (a full volume leaves nothing behind)."""
    temp = _temp_path(folder)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _copy_temp(src: Path, folder: Path) -> Path:
    def fill(out: Any) -> None:
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, out, 1 << 20)

    temp = _write_temp(folder, fill, os.stat(src).st_mode & 0o777)
    try:
        shutil.copystat(src, temp)
    except OSError:
        pass  # times and mode are a courtesy; the bytes are what matters
    return temp


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the data file was synced
    finally:
        os.close(fd)


def _link_new(source: Path, dest: Path, *, copied: bool) -> None:
    """Give `source` the name `dest`, never replacing a file (FileExistsError)."""
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK or not copied:
            raise
        # No hard links on this file system: rename, which could replace a file that
        # appears in the instant after the check (only another writer's, never ingestd's).
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "File exists", str(dest)) from None
        os.rename(source, dest)


class _Placement:
    """One file being put into a folder; undo() removes whatever it has put there."""

    def __init__(self, src: Path, folder: Path):
        self.src = src
        self.folder = folder
        self.copy: Path | None = None  # the temporary copy, if links cannot be used
        self.created: list[Path] = []
        self.renamed: Path | None = None  # src renamed to this (then src is gone)

    def put(self, dest: Path) -> None:
        if self.copy is None:
            try:
                os.link(self.src, dest, follow_symlinks=False)
                self.created.append(dest)
                return
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                # EPERM: protected_hardlinks refuses to link a file ingestd's user cannot
                # read or write (an unreadable file that failed); a rename only needs the
                # folders' permission, as before.
                if exc.errno != errno.EXDEV and self._rename(dest):
                    return
            self.copy = _copy_temp(self.src, self.folder)
        _link_new(self.copy, dest, copied=True)
        self.created.append(dest)

    def _rename(self, dest: Path) -> bool:
        """Rename src to dest on the same file system; False if it is another one."""
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "File exists", str(dest))
        try:
            os.rename(self.src, dest)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        self.renamed = dest
        return True

    def put_bytes(self, dest: Path, data: bytes) -> None:
        temp = _write_temp(self.folder, lambda fh: fh.write(data))
        try:
            _link_new(temp, dest, copied=True)
        finally:
            temp.unlink(missing_ok=True)
        self.created.append(dest)

    def undo(self) -> None:
        if self.renamed is not None:
            os.rename(self.renamed, self.src)  # the only copy: put it back
            self.renamed = None
        for path in reversed(self.created):
            path.unlink(missing_ok=True)
        self.created.clear()

    def close(self) -> None:
        if self.copy is not None:
            self.copy.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _place(src: Path, dest: Path, sidecar: bytes | None = None, *, dedupe: bool = False) -> Path:
    """Put src at dest (or a free variant of its name), then remove it from the inbox."""
    folder = dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    place = _Placement(src, folder)
    reserve = len(SIDECAR_SUFFIX) if sidecar is not None else 0
    try:
        for candidate in _candidates(dest, reserve):
            if os.path.lexists(candidate):
                if dedupe and _same_file(src, candidate):
                    # These very bytes were archived here already (a re-drop, or a move
                    # interrupted after its link): one copy in done/ is the record.
                    os.unlink(src)
                    return candidate
                continue
            try:
                if sidecar is not None:
                    # The sidecar first: a file in failed/ is never without its reason.
                    place.put_bytes(candidate.with_name(candidate.name + SIDECAR_SUFFIX), sidecar)
                place.put(candidate)
            except FileExistsError:
                place.undo()
                continue
            break
        try:
            os.unlink(src)
        except FileNotFoundError:
            pass  # moved away meanwhile; our copy is the file
        _fsync_dir(folder)
        return candidate
    except BaseException:
        place.undo()
        raise
    finally:
        place.close()


def _inside(folder: Path, name: PurePosixPath) -> Path:
    # A name is placed under the folder, never beside or above it (`..`, absolute names).
    dest = folder / Path(*name.parts)
    if (
        name.is_absolute()
        or ".." in name.parts
        or not dest.resolve().is_relative_to(folder.resolve())
    ):
        raise OSError(errno.EINVAL, "destination outside the archive directory", str(dest))
    return dest


def to_done(src: Path, done_dir: Path, name: PurePosixPath, today: dt.date | None = None) -> Path:
    """Move a loaded file to done/YYYY-MM-DD/<name> (blocking: run in a thread)."""
    day = (today or dt.date.today()).isoformat()
    return _place(src, _inside(done_dir / day, name), dedupe=True)


def to_failed(src: Path, failed_dir: Path, name: PurePosixPath, sidecar: bytes) -> Path:
    """Move a failed file to failed/<name> with <name>.error.json (these bytes) beside it;
    names too long for that are shortened (see fit_name)."""
    return _place(src, _inside(failed_dir, name), sidecar)
