"""Move finished files out of the inbox: done/ (dated) on success, failed/ plus a sidecar.

How a move is made belongs to the storage (storage/local_moves.py for folders: it either
completes or leaves nothing behind; an object store copies, then deletes). Here: what a
move is about (Pending), and a move that cannot complete, retried with backoff (Backlog)
and counted; the file is never loaded again because of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from ingestd.exceptions import IngestdError
from ingestd.logs import bound
from ingestd.storage import Handle, Version, resolve
from ingestd.storage import local_moves as _moves
from ingestd.storage.base import StorageUnavailableError
from ingestd.storage.local_moves import SIDECAR_SUFFIX, TEMP_PREFIX, TEMP_SUFFIX, fit_name

if TYPE_CHECKING:
    from ingestd.db.manifest import FileVersion
from ingestd.names import manifest_name

__all__ = ["SIDECAR_SUFFIX", "TEMP_PREFIX", "TEMP_SUFFIX", "fit_name"]  # tests, invariants

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0
FOLDERS = ("done", "failed")
REASONS = ("no_space", "read_only", "permission", "name_too_long", "unavailable", "other")


def reason_of(exc: BaseException) -> str:
    """The low-cardinality reason label of an archive error."""
    if isinstance(exc, StorageUnavailableError):
        return "unavailable"
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
    "unavailable": "ingestd retries the move; check the object store if this lasts",
    "other": "fix that folder",
}


def describe(exc: BaseException, folder: str) -> str:
    """One line saying what went wrong and what to do."""
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        what = str(exc) or type(exc).__name__
    return f"cannot move the file to {folder}/ ({what}); {_ADVICE[reason_of(exc)]}"


def to_done(src: Path, done_dir: Path, name: PurePosixPath, today: dt.date | None = None) -> Path:
    """Move a loaded file to done/YYYY-MM-DD/<name> (blocking: run in a thread)."""
    return _moves.to_done(src, done_dir, name, today)


def sidecar_bytes(report: dict[str, Any]) -> bytes:
    """The .error.json sidecar's bytes for a failure report."""
    return (json.dumps(report, indent=2, default=str) + "\n").encode()


def to_failed(src: Path, failed_dir: Path, name: PurePosixPath, report: dict[str, Any]) -> Path:
    """Move a failed file to failed/<name> with <name>.error.json beside it (names too long
    for that are shortened, see fit_name)."""
    return _moves.to_failed(src, failed_dir, name, sidecar_bytes(report))


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


async def _identity_now(handle: Handle) -> Version | None:
    """_identity() from the event loop: a store's look may be a request (a thread)."""
    if isinstance(handle, Path):
        return _identity(handle)
    return await asyncio.to_thread(_identity, handle)


def _identity(handle: Handle) -> Version | None:
    if not isinstance(handle, Path):
        return resolve(handle).identity(handle)
    try:  # whatever the entry is now: a symlink swapped in is moved as it is
        st = os.stat(handle, follow_symlinks=False)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino  # as storage.local.identity


@dataclass
class Pending:
    """A finished file (its manifest row is final) still to be moved out of the inbox."""

    path: Handle  # a local file's Path, or a store's handle
    name: PurePosixPath
    folder: str  # done | failed
    dest_dir: Path | str  # a local file's destination folder; a store knows its own
    report: dict[str, Any] | None = None  # the sidecar, for failed/
    identity: Version | None = None  # the version this is about
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

    def move(self) -> Path | str:
        """Blocking: run in a thread. Where the file went."""
        if isinstance(self.path, Path) and isinstance(self.dest_dir, Path):
            if self.folder == "done":
                return to_done(self.path, self.dest_dir, self.name)
            return to_failed(self.path, self.dest_dir, self.name, self.report or {})
        storage = resolve(self.path)
        if self.folder == "done":
            return storage.to_done(self.path, self.name)
        return storage.to_failed(self.path, self.name, sidecar_bytes(self.report or {}))


def retry_delay_s(attempts: int) -> float:
    """Backoff after the `attempts`-th failed move of one file."""
    return min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** min(max(attempts - 1, 0), 32))


async def attempt(item: Pending, errors: Counter, bugs: Counter | None = None) -> bool:
    """Try the move once; on failure count it, log one line and schedule the next try.
    A bug in the move (`bugs` counts it) is retried the same way: the file waits in the
    inbox, its row final, and the worker or scanner that asked goes on."""
    try:
        if item.identity is None:
            item.identity = await _identity_now(item.path)
        dest = await asyncio.to_thread(item.move)
    except FileNotFoundError as exc:
        if await _identity_now(item.path) is None:
            log.info("archive_abandoned", extra={"folder": item.folder, "reason": "file gone"})
            return True  # moved away by someone else: nothing left to move
        return _failed(item, exc, errors)
    except (OSError, StorageUnavailableError) as exc:  # a store's 5xx/throttling: not a bug
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


def _failed(item: Pending, exc: OSError | StorageUnavailableError, errors: Counter) -> bool:
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

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def add(self, item: Pending) -> None:
        self._items[item.key] = item

    def holds(self, key: str, identity: Version | None) -> bool:
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
            if not self.holds(item.key, await _identity_now(item.path)):
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
