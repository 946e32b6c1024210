"""A worker: one connection held for its life, one file at a time, retries for transient trouble."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from ingestd import archive
from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.database import Database
from ingestd.db.locks import LOCK_NOT_AVAILABLE, describe_lock_wait
from ingestd.db.manifest import ManifestGoneError, ManifestRowGoneError
from ingestd.db.target import SessionState
from ingestd.exceptions import (
    ConnectError,
    FileError,
    HandedOver,
    IngestdError,
    Interrupted,
    RetryableError,
)
from ingestd.load import FileChangedError
from ingestd.logs import bound
from ingestd.model import (
    FileResult,
    Help,
    LoadContext,
    ManifestStatus,
    Outcome,
    Results,
    internal_error_text,
)
from ingestd.pipeline import process_file
from ingestd.read import guess_file_type
from ingestd.retry import Backoff
from ingestd.versions import DuplicateContent, check_append

# The work queue: files to load, and offers to help with a file another worker is loading.
WorkQueue = asyncio.Queue[Job | Help]

__all__ = ["FileResult", "Results", "WorkQueue", "Worker"]  # FileResult, Results: model.py

log = logging.getLogger(__name__)


@dataclass
class _Tries:
    """Failures count against --max-retries; database outages in the daemon do not."""

    failures: int = 0
    outages: int = 0

    @property
    def attempt(self) -> int:
        return self.failures + 1


class Worker:
    """Takes jobs off the queue until cancelled."""

    def __init__(
        self,
        worker_id: str,
        db: Database,
        ctx: LoadContext,
        results: Results,
        backoff: Backoff,
        leases: set[int],
    ):
        self.worker_id = worker_id
        self._db = db
        self._ctx = ctx
        self._results = results
        self._backoff = backoff
        self._conn: Connection | None = None
        self._session = SessionState()
        self._leases = leases  # claims queued or in hand, renewed by the service
        self._reported = False  # the file in hand is in the run's results already

    async def run(self, queue: WorkQueue) -> None:
        """Serve the queue until a stop is requested: the file in hand stops after its
        batch in hand; no further file is opened."""
        try:
            while (item := await self._take(queue)) is not None:
                try:
                    if self._ctx.stopping.is_set():
                        # Taken in the same instant as the stop: not opened either.
                        if isinstance(item, Job):
                            self._results.add(never_opened(item))
                    elif isinstance(item, Help):
                        await self._help(item)
                    else:
                        with bound(file=str(item.name), worker_id=self.worker_id):
                            await self._handle(item)
                finally:
                    queue.task_done()
        finally:
            await self._release()

    async def _take(self, queue: WorkQueue) -> Job | Help | None:
        """The next item of the queue, or None once a stop is requested."""
        stopping = self._ctx.stopping
        if stopping.is_set():
            return None
        taking = asyncio.ensure_future(queue.get())
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({taking, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not taking.done():
                taking.cancel()
        return taking.result() if taking.done() and not taking.cancelled() else None

    async def _help(self, offer: Help) -> None:
        """Load segments of a file another worker owns; it reports how the file ends."""
        try:
            conn = await self._connection()
        except ConnectError:
            return  # the owner loads the segments itself
        if not await offer.split.help(conn, self.worker_id):
            await self._release(broken=True)

    async def _handle(self, job: Job) -> None:
        metrics = self._ctx.metrics
        metrics.files_in_flight.inc()
        started = time.monotonic()
        self._reported = False
        try:
            await self._finish(job, started)
        except asyncio.CancelledError:
            # The shutdown deadline or a second signal: the batch in hand rolls back.
            if not self._reported:
                self._reported = True
                reason = (
                    "stopped at once (the shutdown deadline or a second signal): "
                    "its batch in hand rolled back"
                )
                self._results.add(interrupted(job, reason))
            raise
        except Exception as exc:  # the per-file bug boundary: the worker goes on
            await self._after_bug(job, exc, started)
        finally:
            metrics.files_in_flight.dec()
            self._leases.discard(job.claim.manifest_id)

    async def _finish(self, job: Job, started: float) -> None:
        """Load the file, move it out of the inbox, and report how it ended."""
        try:
            result = await self._load(job)
        finally:
            self._leases.discard(job.claim.manifest_id)
        result = replace(
            result, seconds=time.monotonic() - started, rows_before=job.claim.rows_done
        )
        if result.status == Outcome.HANDED_OVER:
            log.warning("file_handed_over", extra={"reason": "another process took it over"})
            self._reported = True
            self._results.add(result)
            return
        # The lease is not given back: it runs out by itself, and meanwhile other instances
        # leave a re-dropped copy of this file to this one, which moves it.
        result = await self._archive(job, result)
        self._report(result)

    def _report(self, result: FileResult) -> None:
        metrics = self._ctx.metrics
        metrics.files_processed.labels(result.file_type or "unknown", result.status).inc()
        if result.status == Outcome.SUCCESS:
            metrics.last_success.set(time.time())
        _log_result(result)
        self._reported = True  # from here on the run's results hold the file
        self._results.add(result)

    async def _after_bug(self, job: Job, exc: Exception, started: float) -> None:
        """A bug anywhere in a file's handling (loading, recording a failure, moving it,
        reporting it) ends as internal_error; the file stays pending in the inbox."""
        if self._reported:
            # A listener of the results failed after the file was reported: only the bug.
            self._log_bug(exc)
            return
        result = await self._internal(job, exc, _file_type(job))
        try:
            self._report(replace(result, seconds=time.monotonic() - started))
        except Exception as again:  # the same boundary: a bug reporting it
            self._log_bug(again)

    def _log_bug(self, exc: BaseException) -> None:
        self._ctx.metrics.internal_errors.inc()
        log.error(
            "internal_error",
            exc_info=exc,
            extra={"error": f"{type(exc).__name__}: {exc}", "status": "pending"},
        )

    async def _load(self, job: Job) -> FileResult:
        """Attempts until the file ends; a bug raises out of here (see _handle)."""
        file_type = _file_type(job)
        name, table = str(job.name), job.contract.table
        tries = _Tries()
        while True:
            if self._ctx.manifest.broken is not None:
                # The books are gone: loading on would load rows twice (manifest.halt).
                return FileResult(name, table, Outcome.INTERRUPTED, error=self._ctx.manifest.broken,
                                  file_type=file_type, stay=True)  # fmt: skip
            try:
                rows = await self._attempt(job, first=tries.attempt == 1 and not tries.outages)
                return FileResult(
                    name, table, Outcome.SUCCESS, rows, file_type=file_type, attempts=tries.attempt
                )
            except asyncio.CancelledError:
                raise
            except (Interrupted, HandedOver) as exc:
                status = (
                    Outcome.INTERRUPTED if isinstance(exc, Interrupted) else Outcome.HANDED_OVER
                )
                rows = await self._rows_committed(job) if status == Outcome.INTERRUPTED else 0
                why = str(exc) if status == Outcome.INTERRUPTED else None  # the summary's reason
                return FileResult(
                    name, table, status, rows, error=why, file_type=file_type, stay=True
                )
            except ManifestGoneError as exc:
                self._ctx.manifest.halt(exc)
                await self._release(broken=True)
                await self._record_again(job, exc)
            except DuplicateContent as exc:
                return await self._skip_duplicate(job, exc, file_type)
            except IngestdError as error:
                # Whatever failed may have left this session's stage or checks stale.
                await self._release(broken=True)
                if not isinstance(error, RetryableError):
                    self._count_db_error(error)
                    stay = isinstance(error, FileChangedError)
                    return await self._fail(job, error, file_type, tries.attempt, stay=stay)
                result = await self._transient(job, error, tries, file_type)
                if result is not None:
                    return result

    async def _internal(self, job: Job, exc: Exception, file_type: str) -> FileResult:
        """A bug in ingestd is never the file's fault: one internal_error line with the
        traceback, counted; the file stays pending in the inbox (never failed/), and is
        looked at again at the next rescan (daemon) or the next run, like a retrying file."""
        self._log_bug(exc)
        await self._release(broken=True)  # it may be left mid-transaction
        try:
            rows = await self._rows_committed(job)
        except Exception:  # a bug asking too: the claim's count will do
            rows = job.claim.rows_done
        return FileResult(
            str(job.name), job.contract.table, Outcome.INTERNAL_ERROR, rows,
            error=internal_error_text(exc), file_type=file_type, stay=True,
        )  # fmt: skip

    async def _transient(
        self, job: Job, error: RetryableError, tries: _Tries, file_type: str
    ) -> FileResult | None:
        """After a transient error: wait and go again (None), or how the file ends."""
        delay = self._next_delay(tries, error)
        error = await self._explain(job, error)
        if delay is None:
            gave_up = RetryableError(
                f"gave up after {tries.failures} attempts: {_final(error)}; {self._stays_for()}",
                sqlstate=error.sqlstate,
            )
            return await self._fail(job, gave_up, file_type, tries.attempt, stay=True)
        log.warning(
            "file_retry",
            extra={"error": str(error), "attempt": tries.attempt, "delay_s": round(delay, 2)},
        )
        if not await self._stopped_during(delay):
            return None
        rows = await self._rows_committed(job)
        return FileResult(
            str(job.name),
            job.contract.table,
            Outcome.INTERRUPTED,
            rows,
            error=f"stopped while waiting to retry ({_final(error)}); resumes on the next run",
            file_type=file_type,
            stay=True,
        )

    def _stays_for(self) -> str:
        if self._ctx.settings.once:
            return "the file stays in the inbox for the next run"
        return "the file stays in the inbox and is tried again at the next rescan"

    async def _explain(self, job: Job, error: RetryableError) -> RetryableError:
        """A lock timeout says which table and who holds the lock, not just 'canceled'."""
        if error.sqlstate != LOCK_NOT_AVAILABLE:
            return error
        c = job.contract
        try:
            conn = await self._connection()
            tables = [(c.schema, c.table), self._ctx.manifest.table_ref]
            text = await describe_lock_wait(conn, tables, self._ctx.settings.lock_timeout_s)
        except IngestdError:  # the plain message still tells what happened
            return error
        return RetryableError(f"{text} (transient; will retry)", sqlstate=error.sqlstate)

    async def _record_again(self, job: Job, exc: ManifestGoneError) -> None:
        """A deleted row whose committed rows are known goes back into the books, so that
        the next run resumes after them instead of loading them twice."""
        if not isinstance(exc, ManifestRowGoneError) or exc.rows is None:
            return
        c = job.contract
        table = f"{c.schema}.{c.table}" if c.schema else c.table
        try:
            conn = await self._connection()
            await self._ctx.manifest.record_again(
                conn, job.version, table, self._ctx.run_id, exc.rows
            )
        except IngestdError as error:  # the ERROR line already tells the operator what to do
            log.warning("manifest_record_failed", extra={"error": str(error)})
            await self._release(broken=True)

    async def _rows_committed(self, job: Job) -> int:
        """What the manifest says this version committed (0 if it cannot be asked now)."""
        try:
            conn = await self._connection()
            return (await self._ctx.manifest.progress(conn, job.claim.manifest_id)).rows
        except IngestdError:  # the summary then says 0; the manifest keeps the truth
            await self._release(broken=True)
            return 0

    async def _skip_duplicate(self, job: Job, dup: DuplicateContent, file_type: str) -> FileResult:
        name, table = str(job.name), job.contract.table
        log.info(
            "duplicate_content",
            extra={"original": dup.original.filename, "original_id": dup.original.manifest_id,
                   "status": "skipped", "reason": str(dup)},
        )  # fmt: skip
        try:
            conn = await self._connection()
            await self._ctx.manifest.finish(
                conn, job.claim.manifest_id, ManifestStatus.SKIPPED, str(dup)
            )
        except HandedOver:
            return FileResult(name, table, Outcome.HANDED_OVER, stay=True)
        except ManifestGoneError as exc:
            self._ctx.manifest.halt(exc)
            return FileResult(name, table, Outcome.INTERRUPTED, error=str(exc), stay=True)
        except IngestdError as exc:  # not recorded: leave the file for another look
            await self._release(broken=True)
            reason = f"{dup} (not recorded in the manifest: {exc})"
            return FileResult(
                name, table, Outcome.SKIPPED, error=reason, file_type=file_type, stay=True
            )
        return FileResult(name, table, Outcome.SKIPPED, error=str(dup), file_type=file_type)

    async def _attempt(self, job: Job, *, first: bool) -> int:
        if self._ctx.stopping.is_set():
            raise Interrupted("stopped before it was opened; resumes on the next run")
        conn = await self._connection()
        committed = None
        if first:
            committed = job.claim.committed  # the claim counted this attempt
        else:
            await self._ctx.manifest.add_attempt(conn, job.claim.manifest_id)
        await check_append(conn, job, self._ctx.manifest, self._ctx.settings)
        return await process_file(conn, job, self._ctx, self._session, self.worker_id, committed)

    def _next_delay(self, tries: _Tries, error: RetryableError) -> float | None:
        """Backoff before the next attempt, or None once the retries are used up."""
        if isinstance(error, ConnectError) and not self._ctx.settings.once:
            # The daemon waits out an outage: the file is not failing, the server is away.
            tries.outages += 1
            return self._backoff.delay(min(tries.outages, 5) - 1)
        self._count_db_error(error)
        tries.failures += 1
        if tries.failures > self._ctx.settings.max_retries:
            return None
        self._ctx.metrics.retries.inc()
        return self._backoff.delay(tries.failures - 1)

    def _count_db_error(self, error: IngestdError) -> None:
        """Errors the database layer translated carry the driver error's class."""
        label = getattr(error, "error_class", None)
        if label is not None:
            self._ctx.metrics.db_errors.labels(label).inc()

    async def _stopped_during(self, seconds: float) -> bool:
        """Sleep for a backoff, waking early (True) if a stop is requested."""
        stop = self._ctx.stopping
        sleeper = asyncio.ensure_future(self._backoff.sleep(seconds))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        return stop.is_set()

    async def _fail(
        self, job: Job, error: IngestdError, file_type: str, attempts: int, *, stay: bool
    ) -> FileResult:
        """Record the failure in the manifest, with the rows the version committed. A
        transient failure leaves the file in the inbox for another attempt, and its row
        says 'retrying', not 'failed' (final only once the file leaves the inbox); so does
        one that could not be recorded (database down)."""
        reason = str(error)
        name, table = str(job.name), job.contract.table
        retrying = stay and isinstance(error, RetryableError)
        status = ManifestStatus.RETRYING if retrying else ManifestStatus.FAILED
        rows = 0
        try:
            conn = await self._connection()
            rows = await self._ctx.manifest.finish(conn, job.claim.manifest_id, status, reason)
        except HandedOver:
            return FileResult(name, table, Outcome.HANDED_OVER, stay=True)
        except ManifestGoneError as exc:
            self._ctx.manifest.halt(exc)
            return FileResult(name, table, Outcome.INTERRUPTED, error=str(exc), stay=True)
        except IngestdError as why:
            await self._release(broken=True)
            cause = "the database is unreachable" if isinstance(why, RetryableError) else why
            reason += f" (not recorded in the manifest: {cause})"
            stay = True
        row = error.row if isinstance(error, FileError) else None
        return FileResult(
            name,
            table,
            Outcome.RETRYING if retrying else Outcome.FAILED,
            rows,
            reason,
            row,
            file_type=file_type,
            attempts=attempts,
            stay=stay,
        )

    async def _archive(self, job: Job, result: FileResult) -> FileResult:
        """Move the finished file; one that cannot move comes back with a Pending the
        scanner retries (the manifest row is final: the file is not loaded again)."""
        settings = self._ctx.settings
        done, failed = settings.done_path, settings.failed_path
        if settings.keep_files or done is None or failed is None or result.stay:
            return result
        if result.status in (Outcome.SUCCESS, Outcome.SKIPPED):
            item = archive.Pending(job.path, job.name, "done", done, identity=job.identity)
        else:
            report = archive.failure_report(
                job.name, result.error or "", self._ctx.run_id, attempts=result.attempts,
                row=result.row, table=result.table, checksum=job.version.checksum,
            )  # fmt: skip
            item = archive.Pending(job.path, job.name, "failed", failed, report, job.identity)
        # What the scanner needs to notice the row deleted while the move waits.
        c = job.contract
        item.claim_id, item.version = job.claim.manifest_id, job.version
        item.table = f"{c.schema}.{c.table}" if c.schema else c.table
        item.status, item.rows = result.status, result.rows
        metrics = self._ctx.metrics
        if await archive.attempt(item, metrics.archive_errors, metrics.internal_errors):
            return result
        return replace(result, archive=item)

    async def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = await self._db.acquire()  # ConnectError if none can be had
            self._session.forget()
        return self._conn

    async def _release(self, *, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._session.forget()
        await self._db.release(conn, broken=broken)


_TRANSIENT = " (transient; will retry)"


def _final(error: IngestdError) -> str:
    """A transient error's message once no retry follows."""
    return str(error).removesuffix(_TRANSIENT)


def _log_result(result: FileResult) -> None:
    """One line per finished file: an interruption is not an error (it resumes), a
    transient give-up is a warning (the file stays for another attempt)."""
    extra = {
        "status": result.status,
        "rows": result.rows,
        "rows_this_run": result.rows_this_run,
        "latency_ms": round(result.seconds * 1000, 1),
        "error": result.error,
        "row": result.row,
        "table": result.table,
    }
    if result.status == Outcome.INTERRUPTED:
        # Not a problem: the file stays pending and resumes after its committed rows.
        log.info("file_interrupted", extra={**extra, "rows_committed": result.rows})
        return
    levels = {"success": logging.INFO, "skipped": logging.INFO, "retrying": logging.WARNING,
              # The internal_error line (with the traceback) is the one ERROR for a bug.
              "internal_error": logging.INFO}  # fmt: skip
    log.log(levels.get(result.status, logging.ERROR), "file_finished", extra=extra)


def _file_type(job: Job) -> str:
    file_type: str = job.contract.file_type
    return guess_file_type(job.path.name) if file_type == "auto" else file_type


def never_opened(job: Job) -> FileResult:
    """A file claimed and queued but not taken before the stop: not opened, not touched;
    interrupted like the file in hand, it resumes on the next run."""
    return interrupted(job, "stopped before it was opened")


def interrupted(job: Job, reason: str) -> FileResult:
    """A file the stop ended without asking the database (it may be gone, or the task
    cancelled): one file_interrupted line; the rows are those the claim found, the
    manifest has the ones committed since. It resumes on the next run."""
    rows = job.claim.rows_done
    with bound(file=str(job.name)):
        log.info(
            "file_interrupted",
            extra={"status": "interrupted", "rows_committed": rows, "reason": reason},
        )
    return FileResult(
        str(job.name), job.contract.table, Outcome.INTERRUPTED, rows,
        error=f"{reason}; resumes on the next run", stay=True, rows_before=rows,
    )  # fmt: skip
