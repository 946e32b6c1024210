"""Move finished files out of the inbox: done/ (dated) on success, failed/ plus a sidecar.

A move either completes or leaves nothing behind: the file appears under its final name in
one step (a hard link on the same file system, else a copy to a temporary name in the
destination folder, fsync'd, then linked into place), the sidecar is in place before its
file, and the inbox copy goes last. A move that cannot complete is retried with backoff
(Backlog) and counted; the file is never loaded again because of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import filecmp
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from ingestd.exceptions import IngestdError
from ingestd.logs import bound

if TYPE_CHECKING:
    from ingestd.db.manifest import FileVersion
from ingestd.names import manifest_name

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".error.json"
TEMP_PREFIX = ".ingestd-"  # a dot-file: never discovered, even in a folder that is watched
TEMP_SUFFIX = ".tmp"
RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0
FOLDERS = ("done", "failed")
REASONS = ("no_space", "read_only", "permission", "name_too_long", "other")
_MAX_CLASHES = 100_000
_HASH_CHARS = 8
# The extension kept when a long name is shortened: up to two short suffixes (.csv.gz).
_EXTENSION = re.compile(rb"(\.[A-Za-z0-9_-]{1,10}){1,2}$")
# Link errors that mean "no hard link here" (another file system, a bind mount, no links
# on this file system, protected_hardlinks): copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def reason_of(exc: BaseException) -> str:
    """The low-cardinality reason label of an archive error."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no_space"
    if code == errno.EROFS:
        return "read_only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission"
    if code == errno.ENAMETOOLONG:
        return "name_too_long"
    return "other"


_ADVICE = {
    "no_space": "free space on that volume",
    "read_only": "remount that volume read-write",
    "permission": "give ingestd's user write permission there (check chattr +i, chmod, mounts)",
    "name_too_long": "shorten the file name",
    "other": "fix that folder",
}


def describe(exc: BaseException, folder: str) -> str:
    """One line saying what went wrong and what to do."""
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        what = str(exc) or type(exc).__name__
    return f"cannot move the file to {folder}/ ({what}); {_ADVICE[reason_of(exc)]}"


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


def to_failed(src: Path, failed_dir: Path, name: PurePosixPath, report: dict[str, Any]) -> Path:
    """Move a failed file to failed/<name> with <name>.error.json beside it (names too long
    for that are shortened, see fit_name)."""
    sidecar = (json.dumps(report, indent=2, default=str) + "\n").encode()
    return _place(src, _inside(failed_dir, name), sidecar)


def failure_report(
    name: PurePosixPath,
    reason: str,
    run_id: str,
    *,
    attempts: int,
    row: int | None = None,
    table: str | None = None,
    checksum: bytes | None = None,
) -> dict[str, Any]:
    """The content of a failed file's .error.json sidecar."""
    report: dict[str, Any] = {
        "file": manifest_name(str(name)),  # as the manifest has it: JSON-safe for any bytes
        "reason": reason,
        "row": row,
        "run_id": run_id,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "attempts": attempts,
    }
    if table is not None:
        report["table"] = table
    if checksum is not None:
        report["checksum_sha256"] = checksum.hex()
    return report


# --- moves that could not complete --------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class Pending:
    """A finished file (its manifest row is final) still to be moved out of the inbox."""

    path: Path
    name: PurePosixPath
    folder: str  # done | failed
    dest_dir: Path
    report: dict[str, Any] | None = None  # the sidecar, for failed/
    identity: tuple[int, int] | None = None  # the version this is about
    attempts: int = 0
    next_at: float = 0.0
    error: str = field(default="", compare=False)
    # Its manifest row, looked at before each retry: deleted meanwhile, a restart would
    # load the file again. None: not known (a file moved by the scanner, not a worker).
    claim_id: int | None = None
    version: FileVersion | None = None
    table: str = ""
    status: str = ""
    rows: int = 0

    @property
    def key(self) -> str:
        return str(self.name)

    def move(self) -> Path:
        """Blocking: run in a thread."""
        if self.folder == "done":
            return to_done(self.path, self.dest_dir, self.name)
        return to_failed(self.path, self.dest_dir, self.name, self.report or {})


def retry_delay_s(attempts: int) -> float:
    """Backoff after the `attempts`-th failed move of one file."""
    return min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** min(max(attempts - 1, 0), 32))


async def attempt(item: Pending, errors: Counter, bugs: Counter | None = None) -> bool:
    """Try the move once; on failure count it, log one line and schedule the next try.
    A bug in the move (`bugs` counts it) is retried the same way: the file waits in the
    inbox, its row final, and the worker or scanner that asked goes on."""
    try:
        if item.identity is None:
            item.identity = _identity(item.path)
        dest = await asyncio.to_thread(item.move)
    except FileNotFoundError as exc:
        if _identity(item.path) is None:
            log.info("archive_abandoned", extra={"folder": item.folder, "reason": "file gone"})
            return True  # moved away by someone else: nothing left to move
        return _failed(item, exc, errors)
    except OSError as exc:
        return _failed(item, exc, errors)
    except Exception as exc:  # the per-file bug boundary of a move: not the file's fault
        _bug(item, exc, bugs)
        return False
    if item.attempts:
        log.info(
            "file_archived",
            extra={"folder": item.folder, "attempts": item.attempts + 1, "dest": str(dest)},
        )
    return True


def _failed(item: Pending, exc: OSError, errors: Counter) -> bool:
    item.attempts += 1
    delay = retry_delay_s(item.attempts)
    item.next_at = time.monotonic() + delay
    reason = reason_of(exc)
    item.error = describe(exc, item.folder)
    errors.labels(item.folder, reason).inc()
    log.error(
        "archive_failed",
        extra={
            "folder": item.folder,
            "reason": reason,
            "error": item.error,
            "attempt": item.attempts,
            "retry_in_s": round(delay, 1),
        },
    )
    return False


def _bug(item: Pending, exc: Exception, bugs: Counter | None) -> None:
    """A bug met moving (or checking) a finished file: one internal_error line with the
    traceback, counted; the move is retried later like a failed one."""
    item.attempts += 1
    delay = retry_delay_s(item.attempts)
    item.next_at = time.monotonic() + delay
    item.error = f"internal error (a bug in ingestd): {type(exc).__name__}: {exc}"
    if bugs is not None:
        bugs.inc()
    log.error(
        "internal_error",
        exc_info=exc,
        extra={
            "error": f"{type(exc).__name__}: {exc}",
            "folder": item.folder,
            "status": "archive_pending",
            "retry_in_s": round(delay, 1),
        },
    )


class Backlog:
    """Files whose move out of the inbox waits for a retry, by inbox name.

    The scanner leaves such a file alone (its manifest row is already final: loading it
    again would duplicate or re-fail it) and retries the move when its backoff is up.
    """

    def __init__(self, errors: Counter, bugs: Counter | None = None):
        self._errors = errors
        self._bugs = bugs  # ingest_internal_errors_total
        self._items: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Pending) -> None:
        self._items[item.key] = item

    def holds(self, key: str, identity: tuple[int, int] | None) -> bool:
        """True if this version of the file waits for its move; a changed or vanished
        file is a new version (or none) and is let go."""
        item = self._items.get(key)
        if item is None:
            return False
        if identity is None or identity != item.identity:
            del self._items[key]
            return False
        return True

    async def move(self, item: Pending) -> bool:
        """Try a move now; keep it for a retry if it fails."""
        if await attempt(item, self._errors, self._bugs):
            self._items.pop(item.key, None)
            return True
        self.add(item)
        return False

    async def retry_due(self, check: Callable[[Pending], Awaitable[None]] | None = None) -> None:
        """Retry every move whose backoff is up, after `check` (its manifest row) if given."""
        now = time.monotonic()
        for item in [i for i in self._items.values() if i.next_at <= now]:
            if not self.holds(item.key, _identity(item.path)):
                continue
            # Outside the worker that logged the first attempt: name the file again, as it did.
            with bound(file=str(item.name)):
                try:
                    if check is not None:
                        await check(item)
                    await self.move(item)
                except IngestdError as exc:  # the database away for the look at its row
                    item.next_at = time.monotonic() + retry_delay_s(item.attempts + 1)
                    log.warning("archive_retry_deferred", extra={"error": str(exc)})
                except Exception as exc:  # a bug: this file waits, the scanner goes on
                    _bug(item, exc, self._bugs)
