"""The scanner: route each discovered file to its contract, checksum it, claim it, queue it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ingestd import archive
from ingestd.claim import Job, claim_file, file_version
from ingestd.db.connection import Connection
from ingestd.db.manifest import Manifest
from ingestd.discover import identity, relative_name, scan
from ingestd.logs import bound
from ingestd.metrics import Metrics
from ingestd.settings import Settings
from ingestd.worker import FileResult, Results

log = logging.getLogger("ingestd.scanner")


class Scanner:
    """Feeds the bounded queue; waits when it is full, so memory stays flat."""

    def __init__(
        self,
        settings: Settings,
        conn: Connection,
        manifest: Manifest,
        queue: asyncio.Queue[Job],
        results: Results,
        metrics: Metrics,
        run_id: str,
    ):
        self._settings = settings
        self._conn = conn
        self._manifest = manifest
        self._queue = queue
        self._results = results
        self._metrics = metrics
        self._run_id = run_id
        self.waiting: dict[str, float] = {}  # name -> when first seen (monotonic)
        self.in_hand: set[str] = set()  # queued or being loaded: never offered twice

    def oldest_waiting(self) -> float | None:
        """Monotonic time the oldest unfinished file was first seen."""
        return min(self.waiting.values(), default=None)

    def finished(self, result: FileResult) -> None:
        """Called for every result: the file is no longer waiting."""
        self.waiting.pop(result.name, None)
        self.in_hand.discard(result.name)

    def candidates(self) -> Iterable[Path]:
        """Explicit --files, or every eligible file in the inbox (done/failed excluded)."""
        s = self._settings
        if s.files:
            return s.files
        assert s.inbox is not None  # noqa: S101 - settings guarantee one source
        skip = tuple(p for p in (s.done_dir, s.failed_dir) if p is not None)
        skip += (s.inbox.parent / "done", s.inbox.parent / "failed")
        return scan(s.inbox, skip)

    async def scan_once(self) -> None:
        """Offer every candidate present now."""
        for path in self.candidates():
            await self.offer(path)

    async def offer(self, path: Path) -> None:
        """Route, checksum and claim one file, then queue it (waits while the queue is full)."""
        s = self._settings
        name = relative_name(path, None if s.files else s.inbox)
        key = str(name)
        if key in self.in_hand:
            return
        before = identity(path)
        if before is None:
            return  # gone, or not a regular file any more
        self.waiting.setdefault(key, time.monotonic())
        with bound(file=key):
            contract = s.contract_for(name)
            if contract is None:
                await self._unroutable(path, name)
                return
            try:
                version = await file_version(path, name)
            except OSError as exc:
                await self._unreadable(path, name, contract.table, exc)
                return
            if identity(path) != before:
                self.waiting.pop(key, None)
                return  # still being written: a later event offers it again
            job = await claim_file(
                self._conn,
                self._manifest,
                path=path,
                name=name,
                contract=contract,
                version=version,
                identity=before,
                run_id=self._run_id,
                resume=s.resume,
            )
            if job is None:
                log.info("file_skipped", extra={"status": "skipped", "reason": "already loaded"})
                self._results.add(FileResult(key, contract.table, "skipped"))
                self._metrics.files_processed.labels(_type_of(path), "skipped").inc()
                await self._archive_skipped(path, name)
                return
            self.in_hand.add(key)
            await self._queue.put(job)
            log.debug("file_queued", extra={"rows_committed": job.claim.rows_done})

    async def _archive_skipped(self, path: Path, name: PurePosixPath) -> None:
        # A file already loaded (a re-drop of the same bytes) leaves the inbox like a loaded one.
        s = self._settings
        if not s.keep_files and s.inbox is not None:
            done = s.done_dir or s.inbox.parent / "done"
            await asyncio.to_thread(archive.to_done, path, done, name)

    async def _unroutable(self, path: Path, name: PurePosixPath) -> None:
        patterns = ", ".join(c.pattern for c in self._settings.contracts)
        reason = (
            f"no contract matches {name} (patterns: {patterns}); add a contract or rename the file"
        )
        await self._fail_early(path, name, "", reason)

    async def _unreadable(self, path: Path, name: PurePosixPath, table: str, exc: OSError) -> None:
        await self._fail_early(path, name, table, f"cannot read file: {exc.strerror}")

    async def _fail_early(self, path: Path, name: PurePosixPath, table: str, reason: str) -> None:
        log.error("file_finished", extra={"status": "failed", "error": reason})
        self._results.add(FileResult(str(name), table, "failed", error=reason))
        self._metrics.files_processed.labels(_type_of(path), "failed").inc()
        s = self._settings
        if s.keep_files or s.inbox is None:
            return
        failed = s.failed_dir or s.inbox.parent / "failed"
        report = {
            "file": str(name),
            "reason": reason,
            "line": None,
            "run_id": self._run_id,
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "attempts": 1,
        }
        try:
            await asyncio.to_thread(archive.to_failed, path, failed, name, report)
        except OSError as exc:
            log.error("archive_failed", extra={"error": f"{exc.strerror}: {exc.filename}"})


def _type_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    return "csv" if ".csv" in name or name.endswith((".tsv", ".txt", ".gz")) else "unknown"
