"""Watch the inbox: outlive every error of the watcher, notice the inbox leave and come back.

The watcher only makes discovery prompt; the scanner's rescans (os.scandir, exact for any
name) are what discovery relies on. So whatever stops the watcher (a name that is not
UTF-8, which watchfiles' Rust core cannot decode; an exhausted inotify limit; the inbox
deleted) is logged once, followed by a rescan, and the watcher is started again.

A folder whose name is not UTF-8 stops watchfiles' recursive watch as soon as it starts,
so after such an error the inbox is watched folder by folder (not recursively), without
the folders it cannot name; those are looked at by their modification time instead, and
a change there asks for a rescan. The watcher then stays up while nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

from ingestd.metrics import Metrics
from ingestd.names import shown
from ingestd.storage.base import is_ignored
from ingestd.storage.local import inbox_problem

__all__ = ["InboxWatcher", "inbox_problem"]  # inbox_problem: storage/local.py

log = logging.getLogger("ingestd.watcher")

INBOX_CHECK_S = 0.5  # how often the inbox itself is looked at (one stat and one listing)
RESTART_MIN_S = 0.5  # first delay before a failed watcher starts again; doubles up to:
RESTART_MAX_S = 30.0
STEADY_S = 10.0  # a watcher that ran this long before failing starts again at once
RESCAN_AFTER_START_S = 0.5  # events lost before a new watcher was up are found by a rescan
_UNDECODABLE = "Unable to decode path"  # watchfiles' Rust core, for a name that is not UTF-8


class InboxWatcher:
    """Runs watchfiles on the inbox and keeps it running; `poll()` is called every tick."""

    def __init__(
        self,
        inbox: Path,
        skip_dirs: tuple[Path, ...],
        on_path: Callable[[Path], object],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.inbox = inbox
        self.ok = True  # the inbox is there and can be listed
        self._skip = tuple(str(p.resolve()) for p in skip_dirs)
        self._on_path = on_path
        self._metrics = metrics
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stop_watch = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._identity: tuple[int, int] | None = None
        self._reason: str | None = None
        self._errors_logged: set[str] = set()
        self._failures = 0
        self._started_at = 0.0
        self._next_start = 0.0
        self._last_check = -INBOX_CHECK_S
        self._rescan_at: float | None = None
        self._flat = False  # watch folder by folder: a folder name is not UTF-8
        self._watch_dirs: list[str] = []
        self._unnamed_roots: list[bytes] = []  # folders watchfiles cannot name, topmost
        self._parents: list[bytes] = []  # folders holding one: not watched, stat()ed
        self._unnamed_seen: dict[bytes, tuple[int, int]] = {}
        self._regroup = False  # a folder was added while flat: watch it too

    def poll(self) -> None:
        """Look at the inbox now and then; start the watcher, or again after it stopped."""
        now = self._clock()
        if now - self._last_check >= INBOX_CHECK_S:
            self._last_check = now
            self._check_inbox()
            if self.ok and self._unnamed_roots:
                self._look_at_unnamed(now)
        if not self.ok:
            return
        if self._task is not None and self._task.done():
            self._ended(self._task)
            self._task = None
        if self._task is None and now >= self._next_start:
            self._start(now)

    async def run(self, stop: asyncio.Event, tick_s: float) -> None:
        """poll() every tick until `stop`."""
        while not stop.is_set():
            self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)

    def rescan_due(self) -> bool:
        """True once after the watcher (re)started: events may have been lost meanwhile."""
        if self._rescan_at is None or self._clock() < self._rescan_at:
            return False
        self._rescan_at = None
        return True

    def restart(self) -> None:
        """Watch afresh at the next poll (a folder it could not enter is readable now)."""
        self._retire()
        self._next_start = 0.0

    async def close(self) -> None:
        """Stop the watcher and wait for it."""
        self._retire()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _check_inbox(self) -> None:
        identity, reason = inbox_problem(self.inbox)
        if reason is not None:
            if self.ok or reason != self._reason:
                log.warning(
                    "inbox_missing",
                    extra={
                        "inbox": str(self.inbox),
                        "reason": reason,
                        "action": "not ready until the inbox is back; nothing is loaded meanwhile",
                    },
                )
            self.ok, self._reason = False, reason
            self._retire()
            return
        replaced = self.ok and self._identity is not None and identity != self._identity
        if replaced:
            # Deleted and created again between two looks: the watcher still watches the
            # deleted folder and would never report a file again.
            log.warning("inbox_missing", extra={"inbox": str(self.inbox), "reason": "replaced"})
        if not self.ok or replaced:
            log.info("inbox_back", extra={"inbox": str(self.inbox)})
            self._retire()
            self._next_start = 0.0
        self.ok, self._reason, self._identity = True, None, identity

    def _look_at_unnamed(self, now: float) -> None:
        # Walked again each time: a folder made inside one of them is looked at as well.
        seen = _folder_times(self._parents + _below(self._unnamed_roots))
        if seen != self._unnamed_seen:
            self._unnamed_seen = seen
            self._rescan_at = now
            # Folders may have come or gone: plan the watches again (not a watcher error).
            self.restart()

    def _plan_folders(self) -> None:
        """Split the inbox's folders into those watchfiles can watch and those it cannot name."""
        # inotify reports to a folder's watch even the opening of a folder inside it, so
        # the folder holding an unnamed one is not watched either (a rescan opens them all).
        named: list[str] = []
        unnamed: list[bytes] = []
        parents: list[bytes] = []
        for top, dirs, _ in os.walk(os.fsencode(self.inbox)):
            keep, holds_unnamed = [], False
            for d in dirs:
                full = os.path.join(top, d)
                if os.path.realpath(os.fsdecode(full)) in self._skip:
                    continue
                try:
                    full.decode("utf-8")
                except UnicodeDecodeError:
                    unnamed.append(full)
                    holds_unnamed = True
                    continue  # what is below it is looked at by _below()
                keep.append(d)
            dirs[:] = keep
            if holds_unnamed:
                parents.append(top)
            else:
                named.append(os.fsdecode(top))
        self._watch_dirs, self._unnamed_roots, self._parents = named, unnamed, parents
        self._unnamed_seen = _folder_times(parents + _below(unnamed))
        if not unnamed:
            self._flat = False  # the folders it could not name are gone: watch recursively

    def _start(self, now: float) -> None:
        if self._flat:
            self._plan_folders()
        if not self._flat:
            self._unnamed_roots, self._parents, self._unnamed_seen = [], [], {}
        self._stop_watch = asyncio.Event()
        self._task = asyncio.create_task(self._watch(self._stop_watch), name="ingestd-watch")
        self._started_at = now
        self._rescan_at = now + RESCAN_AFTER_START_S

    def _retire(self) -> None:
        # Its own stop event, never the service's: awatch sets the event it was given when
        # it is cancelled.
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._stop_watch.set()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _ended(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        self._check_inbox()
        if not self.ok:
            return  # inbox_missing says it all
        if error is None and self._regroup:
            self._regroup = False
            self._next_start = 0.0  # not an error: a new folder to watch
            return
        message = _describe(error)
        self._metrics.watcher_restarts.inc()
        if message not in self._errors_logged:
            self._errors_logged.add(message)
            log.warning(
                "watcher_error",
                extra={
                    "error": shown(message),
                    "action": "restarting the watcher; a rescan finds what it missed",
                },
            )
        else:
            log.debug("watcher_error", extra={"error": shown(message)})
        ran_s = self._clock() - self._started_at
        # A name it cannot decode says nothing about the watcher itself: back at once.
        # Anything else (no inotify watches left...) may fail again at once: back off.
        # Once flat, the same error again soon means events keep bringing such names:
        # back off then as well, rescans find the files meanwhile.
        harmless = _UNDECODABLE in message and not (self._flat and ran_s < STEADY_S)
        if _UNDECODABLE in message:
            self._flat = True
        self._failures = 1 if harmless or ran_s >= STEADY_S else self._failures + 1
        delay_s = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (self._failures - 1))
        self._next_start = self._clock() + delay_s

    def _wanted(self, change: Change, path: str) -> bool:
        return (
            change != Change.deleted
            and not is_ignored(path.rsplit("/", 1)[-1])
            and not any(path == d or path.startswith(d + "/") for d in self._skip)
        )

    async def _watch(self, stop_watch: asyncio.Event) -> None:
        flat = self._flat
        paths = self._watch_dirs if flat else [str(self.inbox)]
        if not paths:  # every folder is looked at by its modification time
            await stop_watch.wait()
            return
        async for changes in awatch(
            *paths, watch_filter=self._wanted, debounce=200, step=20, stop_event=stop_watch,
            recursive=not flat, ignore_permission_denied=True,
        ):  # fmt: skip
            for change, path in changes:
                self._on_path(Path(path))
                if flat and change == Change.added and _is_folder(path):
                    self._regroup = True
            if self._regroup:
                return


def _is_folder(path: str) -> bool:
    return os.path.isdir(path)


def _below(roots: list[bytes]) -> list[bytes]:
    """The roots and every folder below them (bytes: these names are not UTF-8)."""
    found: list[bytes] = []
    for root in roots:
        for top, _, _ in os.walk(root):
            found.append(top)
    return found


def _folder_times(folders: list[bytes]) -> dict[bytes, tuple[int, int]]:
    """Modification time and inode of each folder still there: an entry added, renamed or
    removed in it changes them."""
    seen: dict[bytes, tuple[int, int]] = {}
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        seen[folder] = (st.st_mtime_ns, st.st_ino)
    return seen


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the watcher stopped on its own"
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]  # anyio wraps the watcher's error in a task group's
    return f"{type(error).__name__}: {error}"
