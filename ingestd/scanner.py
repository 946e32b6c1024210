"""The scanner: watch the inbox, then route, checksum, claim and queue each settled file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import archive
from ingestd.claim import Job, Skip, claim_file, file_version
from ingestd.db.connection import Connection
from ingestd.db.database import Database
from ingestd.db.locks import LOCK_NOT_AVAILABLE, ManifestLockedError, manifest_locked
from ingestd.db.manifest import FileVersion, Manifest, ManifestGoneError, ManifestRowGoneError
from ingestd.discover import Settler, identity, identity_now, scan
from ingestd.exceptions import (
    DatabaseUnavailableError,
    FileError,
    IngestdError,
    RetryableError,
    UsageError,
)
from ingestd.logs import bound
from ingestd.metrics import Metrics
from ingestd.model import FileResult, ManifestStatus, Outcome, Results, internal_error_text
from ingestd.names import manifest_name
from ingestd.progress import Progress
from ingestd.read import guess_file_type
from ingestd.retry import Backoff
from ingestd.settings import Contract, Settings
from ingestd.storage import Handle, Storage, Version, resolve, storage_for
from ingestd.storage.base import size_of
from ingestd.storage.zip import Mover, ZipArchive, is_archive, is_member, unmatched_reason
from ingestd.watcher import InboxWatcher
from ingestd.worker import WorkQueue, never_opened

log = logging.getLogger(__name__)

_LIST_CHUNK = 1000  # entries a store lists per trip to a thread


# --once: looks at a file that keeps changing under its checksum (or is held by a writer),
# and the first pause between them (doubled each time: 0.5 + 1 + 2 s).
_HASH_TRIES = 4
_REHASH_PAUSE_S = 0.5


class Scanner:
    """Feeds the bounded queue; waits when it is full, so memory stays flat."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        manifest: Manifest,
        queue: WorkQueue,
        results: Results,
        metrics: Metrics,
        run_id: str,
        backoff: Backoff,
    ):
        self.settings = settings  # replaced on SIGHUP
        self._storage: Storage = storage_for(settings)  # the inbox is restart-only
        self._store_ok: bool | None = None  # a listed store: the last listing's outcome
        self._db = db
        self._backoff = backoff
        self.db_ok = True
        self._manifest = manifest
        self._queue = queue
        self._results = results
        self._metrics = metrics
        self._run_id = run_id
        self.waiting: dict[str, float] = {}  # name -> when first seen (monotonic)
        self.in_hand: set[str] = set()  # queued or being loaded: never offered twice
        self._refused: set[Handle] = set()  # logged once, not at every rescan
        self._offering: set[str] = set()  # between settled and queued (or finished)
        self._unreadable: dict[Handle, str] = {}  # inbox folders that cannot be listed: why
        self._watcher: InboxWatcher | None = None
        self._lock_wait: str | None = None  # the last offer waited out a lock on the manifest
        self._zips: dict[str, ZipArchive] = {}  # archives whose members are offered, by name
        self.progress: Progress | None = None
        self.leases: set[int] = set()  # claims queued or in hand (workers drop them when done)
        # The claims' connection, kept while files keep coming: a pool round trip and a
        # session reset a file less. Given back once discovery has nothing to offer.
        self._claim_conn: Connection | None = None
        # Finished files whose move out of the inbox failed: never offered again, retried.
        self.archives = archive.Backlog(metrics.archive_errors, metrics.internal_errors)
        metrics.archive_pending.set_function(lambda: len(self.archives))

    @property
    def inbox_ok(self) -> bool:
        """False while the daemon's inbox is missing or cannot be listed (not ready)."""
        if self._store_ok is not None:
            return self._store_ok
        return self._watcher is None or self._watcher.ok

    def oldest_waiting(self) -> float | None:
        """Monotonic time the oldest file still waiting (in the inbox, not finished) was
        first seen; None when nothing waits."""
        return min(self.waiting.values(), default=None)

    def finished(self, result: FileResult) -> None:
        """Called for every result: the file is no longer waiting."""
        self.waiting.pop(result.name, None)
        self.in_hand.discard(result.name)
        if result.archive is not None:
            self.archives.add(result.archive)

    def candidates(self) -> Iterable[Handle]:
        """Explicit --files, or every eligible entry in the inbox (done/failed excluded)."""
        s = self.settings
        if s.files:
            return s.files
        assert s.inbox is not None  # noqa: S101 - settings guarantee one source
        return self._scan_inbox()

    def _scan_inbox(self) -> Iterator[Handle]:
        # One full pass also tells which folders could not be listed, and which can again.
        seen: set[Handle] = set()

        def unreadable(folder: Handle, reason: str) -> None:
            seen.add(folder)
            self._unreadable_folder(folder, reason)

        yield from self._storage.entries(self._refuse, unreadable)
        for folder in set(self._unreadable) - seen:
            del self._unreadable[folder]
            if not isinstance(folder, Path) or folder.is_dir():
                log.info("folder_readable", extra={"folder": str(folder)})
                if self._watcher is not None:
                    self._watcher.restart()  # it skipped the folder: watch it from now on
        self._metrics.unreadable_folders.set(len(self._unreadable))

    async def _check_row(self, item: archive.Pending) -> None:
        """A file waiting for its move has a final manifest row; deleted meanwhile, a
        restart would load the file again: handled as a row deleted under a worker (one
        ERROR line, not ready, the row recorded again with its rows)."""
        if item.claim_id is None or item.version is None:
            return
        status = ManifestStatus.FAILED
        if item.status in (Outcome.SUCCESS, Outcome.SKIPPED):
            status = ManifestStatus(item.status)
        try:
            async with self._db.connection() as conn:
                try:
                    await self._manifest.check_row(conn, item.claim_id, item.rows)
                except ManifestRowGoneError as exc:
                    self._manifest.halt(exc)
                    await self._manifest.record_again(
                        conn, item.version, item.table, self._run_id, item.rows, status
                    )
        except ManifestGoneError as exc:
            self._manifest.halt(exc)
        except IngestdError as exc:  # the database away: the next retry looks again
            log.debug("manifest_check_failed", extra={"error": str(exc)})

    def unreadable_folders(self) -> tuple[tuple[str, str], ...]:
        """The inbox folders the last pass could not list (name in the inbox, reason)."""
        found = [
            (str(self._storage.name_of(folder)), reason)
            for folder, reason in self._unreadable.items()
        ]
        return tuple(sorted(found))

    def _unreadable_folder(self, folder: Handle, reason: str) -> None:
        if self._unreadable.get(folder) != reason:
            self._unreadable[folder] = reason
            self._metrics.unreadable_folders.set(len(self._unreadable))
            log.warning(
                "folder_unreadable",
                extra={
                    "folder": str(folder),
                    "reason": reason,
                    "action": "its files are not loaded until ingestd may list it "
                    "(check the folder's owner and mode)",
                },
            )

    def _refuse(self, path: Handle, reason: str) -> None:
        if path not in self._refused:
            self._refused.add(path)
            log.warning("file_ignored", extra={"file": str(path), "reason": reason})

    async def scan_once(self) -> None:
        """Offer every candidate present now (--once); gives up if the database stays away."""
        inbox = self.settings.inbox
        if not self.settings.files and inbox is not None:
            problem = await asyncio.to_thread(self._storage.problem)
            if problem is not None:
                raise UsageError(f"cannot use the inbox {self._storage.describe()}: {problem}")
        try:
            await self._offer_listed()
        finally:
            await self.put_back_connection()

    async def _offer_listed(self) -> None:
        async for path in self._listed():
            failures = 0
            while not await self._try_offer(path):
                failures += 1
                if failures > self.settings.max_retries and self._lock_wait is not None:
                    # The database answered: a session holds the manifest, not an outage.
                    raise ManifestLockedError(
                        f"gave up after {failures} attempts: {self._lock_wait}; unloaded "
                        "files are still in place for the next run"
                    )
                if failures > self.settings.max_retries:
                    raise DatabaseUnavailableError(
                        f"the database stayed unreachable after {failures} attempts; "
                        "unloaded files are still in place for the next run"
                    )
                await self._backoff.sleep(self._backoff.delay(failures - 1))

    async def watch(self, stopping: asyncio.Event) -> None:
        """Daemon discovery until `stopping`: files already there first, then what arrives.

        Nothing the file system does stops it: the watcher is restarted after any error
        (then a rescan finds what it missed), and a missing inbox only makes it wait."""
        inbox = self.settings.inbox
        assert inbox is not None  # noqa: S101 - the daemon always has an inbox
        if not self._storage.settles or not isinstance(inbox, Path):
            await self._poll(stopping)
            return
        settler = Settler(
            self.settings.settle_s, on_gone=self._gone, on_unreadable=self._unreadable_folder
        )
        noted = asyncio.Event()  # a file was noted: look at once, not at the next tick

        def note(path: Handle) -> str:
            noted.set()
            return self._note(settler, path)

        watcher = InboxWatcher(inbox, self._archive_dirs(), note, self._metrics)
        self._watcher = watcher
        watcher.poll()
        if watcher.ok:
            self._rescan(settler)
        tick_s = min(0.05, self.settings.settle_s / 4) or 0.01
        # Its own task: a full queue holds this loop in offer(), never the look at the inbox
        # (readiness) or the watcher's restart.
        monitor = asyncio.create_task(watcher.run(stopping, tick_s), name="ingestd-inbox-watch")
        last_rescan = time.monotonic()
        failures = 0
        try:
            while not stopping.is_set():
                if monitor.done():
                    monitor.result()
                    raise RuntimeError("the inbox monitor stopped")
                noted.clear()
                ready = settler.settled()
                if not ready:
                    await self.put_back_connection()
                for i, path in enumerate(ready):
                    if stopping.is_set():
                        break
                    if await self._try_offer(path):
                        failures = 0
                        continue
                    for later in ready[i:]:  # database away: these wait, not until a rescan
                        self._note(settler, later)
                    failures += 1
                    await _sleep_or_stop(stopping, self._backoff.delay(min(failures, 5) - 1))
                    break
                # Full rescans catch what the watcher cannot see (NFS, overflowed inotify),
                # and files whose lease ran out at a dead instance.
                await self.archives.retry_due(self._check_row)
                overdue = time.monotonic() - last_rescan > self.settings.rescan_s
                if watcher.ok and (watcher.rescan_due() or overdue):
                    last_rescan = time.monotonic()
                    self._rescan(settler)
                await _sleep_or_wake(stopping, noted, tick_s)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await watcher.close()
            await self.put_back_connection()

    async def _listed(self) -> AsyncIterator[Handle]:
        """The candidates; a store that lists over the network is listed in a thread, a
        chunk at a time (a local folder is listed here, as its watcher's events are)."""
        candidates = iter(self.candidates())
        if self._storage.settles or self.settings.files:
            for handle in candidates:
                yield handle
            return
        while chunk := await asyncio.to_thread(lambda: list(islice(candidates, _LIST_CHUNK))):
            for handle in chunk:
                yield handle

    async def _poll(self, stopping: asyncio.Event) -> None:
        """Discovery in a store whose entries are complete once listed: list it every
        poll_s and offer what is not in hand; not ready while it cannot be listed."""
        poll_s = self.settings.poll_s
        failures = 0
        # Entries offered and still listed (held by another instance, retrying): offered
        # again once their version changes or at the next full rescan, as a local file
        # would be, not hashed again at every listing.
        offered: dict[Handle, float] = {}
        notes = await self._notifications(stopping)
        while not stopping.is_set():
            await self.archives.retry_due(self._check_row)
            present: set[str] = set()
            stale = time.monotonic() - self.settings.rescan_s
            offered = {h: at for h, at in offered.items() if at > stale}
            try:
                async for handle in self._listed():
                    if stopping.is_set():
                        break
                    key = self._key(handle)
                    present.add(key)
                    if key in self.in_hand or handle in offered:
                        continue
                    if key in self.archives and self.archives.holds(
                        key, await identity_now(handle)
                    ):
                        continue
                    self.waiting.setdefault(key, time.monotonic())
                    if await self._try_offer(handle):
                        offered[handle] = time.monotonic()
                        failures = 0
                        continue
                    failures += 1  # the database away: wait, then list again
                    await _sleep_or_stop(stopping, self._backoff.delay(min(failures, 5) - 1))
                    break
                else:
                    self._forget_absent(present)
            except (RetryableError, OSError) as exc:  # the store away: not ready meanwhile
                self._store_unreachable(exc)
            else:
                self._store_back()
            await self.put_back_connection()
            if notes is None:
                await _sleep_or_stop(stopping, poll_s)
            else:
                await self._take_notifications(notes, stopping, poll_s, offered)

    async def _notifications(self, stopping: asyncio.Event) -> Any:
        """The s3_queue_url receiver (ingestd.storage.sqs), started; None without one."""
        url = self.settings.s3_queue_url
        if not url:
            return None
        from ingestd.storage import sqs  # botocore only when a queue is configured

        notes = await asyncio.to_thread(sqs.notifications_for, url, self._storage)
        notes.start(stopping)
        return notes

    async def _take_notifications(
        self, notes: Any, stopping: asyncio.Event, seconds: float, offered: dict[Handle, float]
    ) -> None:
        """Until the next listing: offer each notified object at once, then delete its
        message, only once the offer ended (claimed in the manifest, skipped, gone)."""
        deadline = time.monotonic() + seconds
        arrival: Any = None
        failures = 0
        while not stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            if arrival is None and (arrival := await notes.next(min(left, 1.0))) is None:
                continue
            if await self._offer_arrival(arrival, offered):
                await notes.delete(arrival)
                notes.taken()
                arrival, failures = None, 0
                continue
            failures += 1  # the database away or the manifest locked: again after a backoff
            delay = self._backoff.delay(min(failures, 5) - 1)
            await _sleep_or_stop(stopping, min(left, delay))
        if arrival is not None:
            # Kept, not deleted: it comes back after its visibility timeout, and the
            # listing that follows now offers its objects anyway.
            notes.taken()

    async def _offer_arrival(self, arrival: Any, offered: dict[Handle, float]) -> bool:
        """Offer a notification's objects; False if one could not be claimed yet."""
        for handle in arrival.handles:
            key = self._key(handle)
            if key in self.in_hand or (
                key in self.archives and self.archives.holds(key, await identity_now(handle))
            ):
                continue
            self.waiting.setdefault(key, time.monotonic())
            if not await self._try_offer(handle):
                return False
            offered[handle] = time.monotonic()
        return True

    def _store_unreachable(self, exc: BaseException) -> None:
        if self._store_ok is not False:
            log.warning(
                "inbox_missing",
                extra={
                    "inbox": self._storage.describe(),
                    # The storage's wording (what to check), as --once's line says it.
                    "reason": getattr(self._storage, "explain", str)(exc),
                    "action": "not ready until the inbox can be listed; nothing loads meanwhile",
                },
            )
        self._store_ok = False

    def _store_back(self) -> None:
        if self._store_ok is False:
            log.info("inbox_back", extra={"inbox": self._storage.describe()})
        self._store_ok = True

    def _forget_absent(self, present: set[str]) -> None:
        # A file seen once and gone since (taken by another instance, renamed by its
        # uploader) waits no more, whichever way it left.
        for key in list(self.waiting):
            if key not in present and key not in self.in_hand and key not in self._offering:
                del self.waiting[key]

    def _rescan(self, settler: Settler) -> None:
        present = {self._note(settler, path) for path in self.candidates()}
        self._forget_absent(present)

    def _note(self, settler: Settler, path: Handle) -> str:
        name = self._key(path)
        assert isinstance(path, Path)  # noqa: S101 - only a local inbox settles
        if path.is_dir() and not path.is_symlink():
            # A folder moved in whole: each of its files waits from now, and is counted so.
            for child in scan(path, self._archive_dirs(), self._refuse, self._unreadable_folder):
                self._note(settler, child)
            return name
        if name not in self.in_hand and not self.archives.holds(name, identity(path)):
            settler.note(path)
            if path in settler:
                self.waiting.setdefault(name, time.monotonic())
        return name

    def _gone(self, path: Handle) -> None:
        """The settler lost sight of a file before offering it: it waits no more."""
        name = self._key(path)
        if name not in self.in_hand and name not in self._offering:
            self.waiting.pop(name, None)

    def _archive_dirs(self) -> tuple[Path, ...]:
        s = self.settings
        return tuple(p for p in (s.done_path, s.failed_path) if isinstance(p, Path))

    async def _try_offer(self, path: Handle) -> bool:
        """Offer a file; False if the database could not be reached or the manifest is
        locked (the file waits)."""
        try:
            await self.offer(path)
        except ManifestLockedError as exc:
            if self._lock_wait != str(exc):
                log.warning("manifest_locked", extra={"file": str(path), "error": str(exc)})
            self._lock_wait = str(exc)
            return False
        except (RetryableError, DatabaseUnavailableError) as exc:
            self._lock_wait = None
            self._db_down(exc)
            return False
        except asyncio.CancelledError:
            raise
        except ManifestGoneError as exc:
            self._manifest.halt(exc)  # loud once; nothing is offered any more
            return True
        except IngestdError as exc:
            # One file must never stop discovery (a missing grant on the manifest, say):
            # one line; the next rescan offers it again.
            self.in_hand.discard(self._key(path))
            log.error("offer_failed", extra={"file": str(path), "error": str(exc)})
            return True
        except Exception as exc:  # not ingestd's own error: a bug; discovery goes on
            self._internal_error(path, exc)
            return True
        self.db_ok = True
        self._lock_wait = None
        return True

    def _key(self, path: Handle) -> str:
        return str(self._name_of(path))

    def _name_of(self, path: Handle) -> PurePosixPath:
        # A zip member is named by its archive (ARCHIVE.zip/MEMBER), not by the inbox.
        if is_member(path):
            return resolve(path).name_of(path)
        return self._storage.name_of(path)

    def _internal_error(self, path: Handle, exc: Exception) -> None:
        """A bug met while offering a file: one internal_error line with the traceback,
        counted; the file stays in the inbox (pending if claimed) for the next rescan, and
        --once exits 1 (it did not load)."""
        key = self._key(path)
        self.in_hand.discard(key)
        self._metrics.internal_errors.inc()
        log.error(
            "internal_error",
            exc_info=exc,
            extra={"file": key, "error": f"{type(exc).__name__}: {exc}"},
        )
        if self.settings.once:
            result = FileResult(key, "", Outcome.INTERNAL_ERROR, error=internal_error_text(exc))
            self._results.add(result)

    def _db_down(self, exc: BaseException) -> None:
        if self.db_ok:
            log.warning("database_unavailable", extra={"error": str(exc)})
        self.db_ok = False

    async def offer(self, path: Handle) -> None:
        """Route, checksum and claim one file, then queue it (waits while the queue is full)."""
        if self._manifest.broken is not None:
            return  # the manifest disappeared: loading would load rows twice (manifest.halt)
        name = self._name_of(path)  # resolved once a file: a few system calls each time
        key = str(name)
        if key in self._offering:
            return
        self._offering.add(key)
        try:
            await self._offer(path, name)
        finally:
            self._offering.discard(key)

    async def _offer(self, path: Handle, name: PurePosixPath, tries: int = 1) -> None:
        s = self.settings
        key = str(name)
        if not s.files and name.is_absolute():
            # Resolves outside the inbox: reached through a symlinked folder. Never read it.
            self.waiting.pop(key, None)
            self._refuse(path, "outside the inbox (through a symbolic link)")
            return
        if key in self.in_hand:
            return
        before = await identity_now(path)
        if before is None:
            self.waiting.pop(key, None)
            return  # gone, or not a regular file any more
        if self.archives.holds(key, before):
            self.waiting.pop(key, None)
            return  # finished already; only its move waits (retried with backoff)
        self.waiting.setdefault(key, time.monotonic())
        if is_archive(path):
            with bound(file=manifest_name(key)):
                await self._offer_archive(path, name, before)
            return
        with bound(file=manifest_name(key)):
            contract = s.contract_for(name)
            try:
                # A local file's size as discovery saw it: a small one is hashed inline.
                seen = size_of(before) if isinstance(path, Path) else None
                version = await file_version(path, name, seen)
            except FileNotFoundError:
                # Moved away meanwhile: by another instance that has just loaded it, or by
                # an operator. Nothing to load and nothing failed.
                self.waiting.pop(key, None)
                log.info("file_vanished", extra={"status": "gone"})
                return
            except OSError as exc:
                await self._hash_failed(path, name, contract, before, exc, tries)
                return
            if contract is None:
                await self._unroutable(path, name, version)
                return
            if await identity_now(path) != before:
                self.waiting.pop(key, None)
                await self._changed_under_hash(path, name, contract.table, tries)
                return
            job = await self._accounted(self._claim(path, name, contract, version, before))
            if isinstance(job, Skip):
                await self._skipped(path, name, contract.table, job)
                return
            self.in_hand.add(key)
            self.leases.add(job.claim.manifest_id)  # renewed while it waits in the queue too
            if self.progress is not None:
                self.progress.claimed(key, version.filesize)
            await self._queue_or_report(job)
            log.debug("file_queued", extra={"rows_committed": job.claim.rows_done})

    async def _hash_failed(
        self,
        path: Handle,
        name: PurePosixPath,
        contract: Contract | None,
        before: Version,
        exc: OSError,
        tries: int,
    ) -> None:
        """A file its checksum could not read: failed with the reason, unless the reason
        passes (EAGAIN: a writer holds a lease on it, Samba's oplocks; the kernel is
        breaking it), which is waited for like a file still being written."""
        table = contract.table if contract else ""
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) and contract is not None:
            self.waiting.pop(str(name), None)
            why = f"it could not be opened ({exc.strerror}: a writer holds a lease on it?)"
            await self._changed_under_hash(path, name, table, tries, why)
            return
        unread = FileVersion(manifest_name(str(name)), b"", size_of(before))
        await self._fail_early(path, name, unread, table, f"cannot read file: {exc.strerror}")

    async def _changed_under_hash(
        self,
        path: Handle,
        name: PurePosixPath,
        table: str,
        tries: int,
        why: str = "it changed while it was checksummed",
    ) -> None:
        """The file changed while it was checksummed (or is held by a writer). The daemon
        waits for the next event or rescan; --once has none: it looks again, pausing
        longer each time, and if that goes on says so (exit 1) instead of leaving the file
        behind in silence."""
        if not self.settings.once:
            return
        if tries < _HASH_TRIES:
            await asyncio.sleep(_REHASH_PAUSE_S * 2 ** (tries - 1))
            await self._offer(path, name, tries + 1)
            return
        reason = (
            f"{why}, {_HASH_TRIES} times in {_REHASH_PAUSE_S * (2 ** (_HASH_TRIES - 1) - 1):g} "
            "s (still being written?): not loaded; it stays in the inbox for the next run"
        )
        log.warning("file_unsettled", extra={"status": "interrupted", "reason": reason})
        self._results.add(
            FileResult(str(name), table, Outcome.INTERRUPTED, error=reason, stay=True)
        )

    async def _offer_archive(self, path: Handle, name: PurePosixPath, before: Version) -> None:
        """A zip archive is a folder: its members, in name order, are offered as entries
        named ARCHIVE.zip/MEMBER. The archive moves once each offered member has ended here
        (zip.ZipArchive); one offered again while members are in hand keeps its group."""
        s, key = self.settings, str(name)
        group = self._zips.get(key)
        if group is None or group.version != before or group.moved:
            outer = self._storage if isinstance(path, Path) else resolve(path)
            mover = self._archive_mover(path, name)
            group = ZipArchive(outer, path, name, before, mover, self._run_id)
            self._zips = {k: g for k, g in self._zips.items() if not g.moved}
            self._zips[key] = group
        try:
            members = await asyncio.to_thread(group.members)
        except FileNotFoundError:
            self.waiting.pop(key, None)
            return
        except (OSError, FileError) as exc:
            reason = f"cannot read file: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            unread = FileVersion(manifest_name(key), b"", size_of(before))
            await self._fail_early(path, name, unread, "", reason)
            return
        self.waiting.pop(key, None)  # its members wait, each on its own
        matched = [m for m in members if s.contract_for(group.name_of(m)) is not None]
        for member in members:
            if member not in matched:
                log.info(
                    "zip_member_unmatched",
                    extra={"member": member.member, "reason": "no contract matches it"},
                )
        if not matched:
            reason = unmatched_reason(str(name), [c.pattern for c in s.contracts], not members)
            unread = FileVersion(manifest_name(key), b"", size_of(before))
            await self._fail_early(path, name, unread, "", reason)
            return
        group.expect(matched)
        for member in matched:
            # Ended here already (offered again at a rescan while another member loads):
            # its row is final, so it is not hashed again.
            if not group.ended(member):
                await self.offer(member)

    def _archive_mover(self, path: Handle, name: PurePosixPath) -> Mover:
        """How a zip archive leaves the inbox once its members ended (blocking)."""
        s = self.settings

        def move(folder: str, report: dict[str, Any] | None) -> Path | str:
            dest = s.done_path if folder == "done" else s.failed_path
            if s.keep_files or dest is None:
                return str(name)
            return archive.Pending(path, name, folder, dest, report).move()

        return move

    async def _accounted(self, claim: Awaitable[Job | Skip]) -> Job | Skip:
        """The claim; a stop in the middle of it lets its one statement end, so that a
        file claimed is accounted for (interrupted, never opened)."""
        claiming = asyncio.ensure_future(claim)
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(IngestdError):
                claimed = await claiming
                if isinstance(claimed, Job):
                    self._results.add(never_opened(claimed))
            raise

    async def _queue_or_report(self, job: Job) -> None:
        """Queue a claimed file; a stop while the queue is full reports it like a queued
        file the stop found (interrupted, never opened)."""
        try:
            await self._queue.put(job)
        except asyncio.CancelledError:
            self._results.add(never_opened(job))
            raise

    async def _claim(
        self,
        path: Handle,
        name: PurePosixPath,
        contract: Contract,
        version: FileVersion,
        before: Version,
    ) -> Job | Skip:
        try:
            conn = await self._claim_connection()
            try:
                return await claim_file(
                    conn,
                    self._manifest,
                    path=path,
                    name=name,
                    contract=contract,
                    version=version,
                    identity=before,
                    run_id=self._run_id,
                    resume=self.settings.resume,
                )
            except IngestdError:
                await self.put_back_connection()  # failed cleanly: the pool resets it
                raise
            except BaseException:
                # A bug or a cancellation: it may be left mid-statement; never reused.
                await self.put_back_connection(broken=True)
                raise
        except RetryableError as exc:
            if exc.sqlstate != LOCK_NOT_AVAILABLE:
                raise
            ref = self._manifest.table_ref
            raise await manifest_locked(self._db, ref, self.settings.lock_timeout_s) from exc

    async def _claim_connection(self) -> Connection:
        if self._claim_conn is None:
            self._claim_conn = await self._db.acquire()  # ConnectError if none can be had
        return self._claim_conn

    async def put_back_connection(self, *, broken: bool = False) -> None:
        """Give the claims' connection back to the pool (discovery has nothing to offer)."""
        conn, self._claim_conn = self._claim_conn, None
        if conn is not None:
            await self._db.release(conn, broken=broken)

    async def _skipped(self, path: Handle, name: PurePosixPath, table: str, skip: Skip) -> None:
        key = str(name)
        self.waiting.pop(key, None)
        if not skip.loaded:
            # Another instance is loading it; if that instance dies, its lease runs out and
            # a later scan here takes the file over.
            log.info("file_held_elsewhere", extra={"status": "held"})
            if self.settings.once:
                self._results.add(
                    FileResult(key, table, Outcome.HELD, error="another instance has it")
                )
            return
        log.info("file_skipped", extra={"status": "skipped", "reason": "already loaded"})
        self._results.add(FileResult(key, table, Outcome.SKIPPED))
        self._metrics.files_processed.labels(guess_file_type(path.name), "skipped").inc()
        if not skip.held_elsewhere:  # the instance that loaded it moves it itself
            await self._archive_skipped(path, name)

    async def _archive_skipped(self, path: Handle, name: PurePosixPath) -> None:
        # A file already loaded (a re-drop of the same bytes) leaves the inbox like a loaded one.
        done = self.settings.done_path
        if not self.settings.keep_files and done is not None:
            await self.archives.move(archive.Pending(path, name, "done", done))

    async def _unroutable(self, path: Handle, name: PurePosixPath, version: FileVersion) -> None:
        patterns = ", ".join(c.pattern for c in self.settings.contracts)
        reason = (
            f"no contract matches {version.filename} (patterns: {patterns}); "
            "add a contract or rename the file"
        )
        await self._fail_early(path, name, version, "", reason)

    async def _fail_early(
        self, path: Handle, name: PurePosixPath, version: FileVersion, table: str, reason: str
    ) -> None:
        """A file that fails before it can be claimed: recorded in the manifest all the same
        (an unreadable file with an empty checksum), then moved to failed/ under its own
        name (the version holds the manifest form of it)."""
        log.error("file_finished", extra={"status": "failed", "error": reason})
        self._results.add(FileResult(str(name), table, Outcome.FAILED, error=reason))
        self._metrics.files_processed.labels(guess_file_type(path.name), "failed").inc()
        try:
            async with self._db.connection() as conn:
                await self._manifest.record_failure(conn, version, table, self._run_id, reason)
        except IngestdError as exc:  # the sidecar still tells; the manifest is best effort here
            log.warning("manifest_record_failed", extra={"error": str(exc)})
        failed = self.settings.failed_path
        if self.settings.keep_files or failed is None:
            return
        report = archive.failure_report(name, reason, self._run_id, attempts=1)
        await self.archives.move(archive.Pending(path, name, "failed", failed, report))


async def _sleep_or_wake(stopping: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Sleep for a tick, or less if `wake` or `stopping` is set meanwhile."""
    if wake.is_set() or stopping.is_set():
        return
    waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
