"""A worker: one connection held for its life, one file at a time, retries for transient trouble."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ingestd import archive
from ingestd.claim import Job
from ingestd.db.connection import Pool, PooledConnection, give_back
from ingestd.db.errors import error_class, translate
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
from ingestd.load import FileChangedError, LoadContext
from ingestd.logs import bound
from ingestd.pipeline import process_file
from ingestd.read import guess_file_type
from ingestd.retry import Backoff
from ingestd.split import Help
from ingestd.versions import DuplicateContent, check_append

# The work queue: files to load, and offers to help with a file another worker is loading.
WorkQueue = asyncio.Queue[Job | Help]

log = logging.getLogger("ingestd.worker")


@dataclass(frozen=True)
class FileResult:
    """How one file ended, for the summary and the exit status."""

    name: str
    table: str
    status: str  # success | skipped | failed | retrying | interrupted | held | handed_over
    rows: int = 0
    error: str | None = None
    row: int | None = None
    seconds: float = 0.0
    file_type: str = ""
    attempts: int = 1
    stay: bool = False  # leave the file in the inbox (transient failure, file changed)
    archive: archive.Pending | None = None  # its move out of the inbox failed: retried
    rows_before: int = 0  # of `rows`, committed by an earlier run (a resumed file)

    @property
    def rows_this_run(self) -> int:
        """The rows this run committed: a resumed file's earlier rows are not this run's."""
        return max(0, self.rows - self.rows_before)


@dataclass
class Results:
    """Outcomes of a run, appended by workers and the scanner (single event loop: no lock)."""

    files: list[FileResult] = field(default_factory=list)
    on_result: Callable[[FileResult], None] | None = None

    def add(self, result: FileResult) -> None:
        self.files.append(result)
        if self.on_result is not None:
            self.on_result(result)


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
        pool: Pool,
        ctx: LoadContext,
        results: Results,
        backoff: Backoff,
        leases: set[int],
    ):
        self.worker_id = worker_id
        self._pool = pool
        self._ctx = ctx
        self._results = results
        self._backoff = backoff
        self._conn: PooledConnection | None = None
        self._session = SessionState()
        self._leases = leases  # claims queued or in hand, renewed by the service
        self.busy = False

    async def run(self, queue: WorkQueue) -> None:
        """Serve the queue forever (the service cancels this task to stop it)."""
        try:
            while True:
                job = await queue.get()
                self.busy = True
                try:
                    if isinstance(job, Help):
                        await self._help(job)
                        continue
                    with bound(file=str(job.name), worker_id=self.worker_id):
                        await self._handle(job)
                finally:
                    self.busy = False
                    queue.task_done()
        finally:
            await self._release()

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
        try:
            result = await self._load(job)
        finally:
            metrics.files_in_flight.dec()
            self._leases.discard(job.claim.manifest_id)
        result = replace(
            result, seconds=time.monotonic() - started, rows_before=job.claim.rows_done
        )
        if result.status == "handed_over":
            log.warning("file_handed_over", extra={"reason": "another process took it over"})
            self._results.add(result)
            return
        # The lease is not given back: it runs out by itself, and meanwhile other instances
        # leave a re-dropped copy of this file to this one, which moves it.
        result = await self._archive(job, result)
        metrics.files_processed.labels(result.file_type or "unknown", result.status).inc()
        if result.status == "success":
            metrics.last_success.set(time.time())
        _log_result(result)
        self._results.add(result)

    async def _load(self, job: Job) -> FileResult:
        file_type: str = job.contract.file_type
        if file_type == "auto":
            file_type = guess_file_type(job.path.name)
        name, table = str(job.name), job.contract.table
        tries = _Tries()
        while True:
            if self._ctx.manifest.broken is not None:
                # The books are gone: loading on would load rows twice (manifest.halt).
                return FileResult(name, table, "interrupted", error=self._ctx.manifest.broken,
                                  file_type=file_type, stay=True)  # fmt: skip
            try:
                rows = await self._attempt(job, first=tries.attempt == 1 and not tries.outages)
                return FileResult(
                    name, table, "success", rows, file_type=file_type, attempts=tries.attempt
                )
            except asyncio.CancelledError:
                raise
            except (Interrupted, HandedOver) as exc:
                status = "interrupted" if isinstance(exc, Interrupted) else "handed_over"
                rows = await self._rows_committed(job) if status == "interrupted" else 0
                return FileResult(name, table, status, rows, file_type=file_type, stay=True)
            except ManifestGoneError as exc:
                self._ctx.manifest.halt(exc)
                await self._release(broken=True)
                await self._record_again(job, exc)
            except DuplicateContent as exc:
                return await self._skip_duplicate(job, exc, file_type)
            except Exception as exc:
                error = exc if isinstance(exc, IngestdError) else translate(exc)
                # Whatever failed may have left this session's stage or checks stale.
                await self._release(broken=True)
                if not isinstance(error, RetryableError):
                    if isinstance(exc.__cause__, Exception) or not isinstance(exc, IngestdError):
                        self._count_db_error(exc)
                    stay = isinstance(error, FileChangedError)
                    return await self._fail(job, error, file_type, tries.attempt, stay=stay)
                result = await self._transient(job, error, exc, tries, file_type)
                if result is not None:
                    return result

    async def _transient(
        self, job: Job, error: RetryableError, exc: Exception, tries: _Tries, file_type: str
    ) -> FileResult | None:
        """After a transient error: wait and go again (None), or how the file ends."""
        error = await self._explain(job, error)
        delay = self._next_delay(tries, error, exc)
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
            str(job.name), job.contract.table, "interrupted", rows, file_type=file_type, stay=True
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
        except Exception:  # the plain message still tells what happened
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
        except Exception as error:  # the ERROR line already tells the operator what to do
            log.warning("manifest_record_failed", extra={"error": str(error)})
            await self._release(broken=True)

    async def _rows_committed(self, job: Job) -> int:
        """What the manifest says this version committed (0 if it cannot be asked now)."""
        try:
            conn = await self._connection()
            return (await self._ctx.manifest.progress(conn, job.claim.manifest_id)).rows
        except Exception:  # the summary then says 0; the manifest keeps the truth
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
            await self._ctx.manifest.finish(conn, job.claim.manifest_id, "skipped", str(dup))
        except HandedOver:
            return FileResult(name, table, "handed_over", stay=True)
        except ManifestGoneError as exc:
            self._ctx.manifest.halt(exc)
            return FileResult(name, table, "interrupted", error=str(exc), stay=True)
        except Exception as exc:  # not recorded: leave the file for another look
            await self._release(broken=True)
            reason = f"{dup} (not recorded in the manifest: {translate(exc)})"
            return FileResult(name, table, "skipped", error=reason, file_type=file_type, stay=True)
        return FileResult(name, table, "skipped", error=str(dup), file_type=file_type)

    async def _attempt(self, job: Job, *, first: bool) -> int:
        conn = await self._connection()
        committed = None
        if first:
            committed = job.claim.committed  # the claim counted this attempt
        else:
            await self._ctx.manifest.add_attempt(conn, job.claim.manifest_id)
        await check_append(conn, job, self._ctx.manifest, self._ctx.settings)
        return await process_file(conn, job, self._ctx, self._session, self.worker_id, committed)

    def _next_delay(self, tries: _Tries, error: IngestdError, exc: Exception) -> float | None:
        """Backoff before the next attempt, or None once the retries are used up."""
        if isinstance(error, ConnectError) and not self._ctx.settings.once:
            # The daemon waits out an outage: the file is not failing, the server is away.
            tries.outages += 1
            return self._backoff.delay(min(tries.outages, 5) - 1)
        self._count_db_error(exc)
        tries.failures += 1
        if tries.failures > self._ctx.settings.max_retries:
            return None
        self._ctx.metrics.retries.inc()
        return self._backoff.delay(tries.failures - 1)

    def _count_db_error(self, exc: BaseException) -> None:
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        self._ctx.metrics.db_errors.labels(error_class(cause)).inc()

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
        status = "retrying" if retrying else "failed"
        rows = 0
        try:
            conn = await self._connection()
            rows = await self._ctx.manifest.finish(conn, job.claim.manifest_id, status, reason)
        except HandedOver:
            return FileResult(name, table, "handed_over", stay=True)
        except ManifestGoneError as exc:
            self._ctx.manifest.halt(exc)
            return FileResult(name, table, "interrupted", error=str(exc), stay=True)
        except Exception as exc:
            await self._release(broken=True)
            why = translate(exc)
            cause = "the database is unreachable" if isinstance(why, RetryableError) else why
            reason += f" (not recorded in the manifest: {cause})"
            stay = True
        row = error.row if isinstance(error, FileError) else None
        return FileResult(
            name,
            table,
            "retrying" if retrying else "failed",
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
        if result.status in ("success", "skipped"):
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
        if await archive.attempt(item, self._ctx.metrics.archive_errors):
            return result
        return replace(result, archive=item)

    async def _connection(self) -> PooledConnection:
        if self._conn is None:
            try:
                self._conn = await self._pool.acquire(timeout=self._ctx.settings.connect_timeout_s)
            except Exception as exc:
                raise ConnectError(f"cannot get a database connection: {translate(exc)}") from exc
            self._session.forget()
        return self._conn

    async def _release(self, *, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._session.forget()
        await give_back(self._pool, conn, broken=broken)


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
    if result.status == "interrupted":
        log.warning("file_interrupted", extra={**extra, "rows_committed": result.rows})
        return
    levels = {"success": logging.INFO, "skipped": logging.INFO, "retrying": logging.WARNING}
    log.log(levels.get(result.status, logging.ERROR), "file_finished", extra=extra)
