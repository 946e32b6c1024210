"""process_file: the table of contents of ingestd. Read, stage, merge and record one file."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pyarrow as pa

from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.errors import translate
from ingestd.db.manifest import Committed, Manifest
from ingestd.db.merge import apply_batch, check_mode_supported
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat
from ingestd.db.target import SessionState, ensure_table_from_headers, has_unique_key
from ingestd.discover import identity
from ingestd.encode import encode_batch
from ingestd.exceptions import FileError, IngestdError, Interrupted
from ingestd.metrics import Metrics
from ingestd.progress import Progress
from ingestd.read import BatchReader, open_reader, skip_rows
from ingestd.read.csv_reader import parse_segment
from ingestd.read.raw_csv import NotRaw, RawCsv
from ingestd.reject import Sorting, is_bad_data, load_sorting_out
from ingestd.settings import Mode, Settings

log = logging.getLogger("ingestd.pipeline")


@dataclass(frozen=True)
class LoadContext:
    """What every worker shares: read-only settings and the run's books."""

    settings: Settings
    manifest: Manifest
    metrics: Metrics
    run_id: str
    server_version: int
    stopping: asyncio.Event
    progress: Progress | None = None  # --once on a terminal


class FileChangedError(FileError):
    """The file changed or vanished while it was being loaded."""


async def process_file(
    conn: Connection,
    job: Job,
    ctx: LoadContext,
    session: SessionState,
    worker_id: str,
    committed: Committed | None = None,
) -> int:
    """Load one claimed file, one transaction per batch; returns the file's total rows.

    Resumes after the last batch the manifest says was committed, so running it again
    after any failure never loads a row twice.
    """
    contract = job.contract
    done = _Done(0, 0, 0)
    try:
        _check_unchanged(job)
        s = ctx.settings
        reader = await asyncio.to_thread(
            open_reader, job.path, contract, s.chunk_size, s.memory_limit_bytes
        )
        target = Target(contract.schema, contract.table, reader.layout.columns, contract.pk)
        if not session.checked(target, contract.mode):
            await _prepare_target(
                conn, target, reader.layout.pg_types, contract.mode, ctx.server_version
            )
            session.mark_checked(target, contract.mode)
        stage = None if contract.mode == "append" else await session.stage(conn, target)
        # A first attempt knows its progress from the claim; a retry asks the manifest,
        # the only truth after a commit whose reply was lost.
        if committed is None:
            committed = await ctx.manifest.progress(conn, job.claim.manifest_id)
        done = _Done(committed.rows, committed.rejected, committed.batches)
        if done.rows:
            log.info("file_resumed", extra={"rows_committed": done.rows})
        # A file's own bytes go as they are when nothing needs changing (a fresh start:
        # a resume finds its place by counting rows, which the Arrow reader does).
        raw = reader.raw if s.raw_csv and not done.rows else None
        load = _Load(conn, job, ctx, target, stage, worker_id, reader.layout.file_type)
        while True:
            try:
                async for piece in _pieces(reader, raw, done.rows, stage is not None, s):
                    await load.batch(piece, done)
                break
            except NotRaw as why:
                log.info(
                    "raw_csv_fallback", extra={"reason": str(why), "rows_committed": done.rows}
                )
                raw = None  # the rest through Arrow, after the rows committed so far
        _check_unchanged(job)
        await ctx.manifest.finish(conn, job.claim.manifest_id, "success", None)
        return done.rows
    except FileError as exc:
        # A read error in a file that changed under us is the change, not bad data.
        if not isinstance(exc, FileChangedError) and identity(job.path) != job.identity:
            _check_unchanged(job)
        raise
    except IngestdError:
        raise
    except Exception as exc:
        raise translate(exc, first_row=done.rows + 1) from exc


@dataclass
class _Done:
    """Where a file stands: rows consumed, of them set aside, batches committed."""

    rows: int
    rejected: int
    batches: int


@dataclass(frozen=True)
class _Piece:
    """What one batch sends: an Arrow batch encoded by ingestd, or a raw segment of the file
    (its Arrow form is only made if its rows must be sorted out)."""

    payload: memoryview
    fmt: CopyFormat
    batch: pa.RecordBatch | None = None
    raw: RawCsv | None = None


@dataclass(frozen=True)
class _Load:
    """The fixed parts of loading one file."""

    conn: Connection
    job: Job
    ctx: LoadContext
    target: Target
    stage: str | None
    worker_id: str
    file_type: str

    async def batch(self, piece: _Piece, done: _Done) -> None:
        """One batch, start to commit; advances `done`."""
        if self.ctx.stopping.is_set():
            raise Interrupted(f"stopped after {done.rows} rows; resumes on the next run")
        _check_unchanged(self.job)  # one stat per batch: stop early on a file rewritten under us
        started = time.perf_counter()
        rows, written, set_aside = await self._commit(piece, done)
        log.info(
            "batch_committed",
            extra={
                "batch_idx": done.batches,
                "via": "copy" if piece.raw is not None else "arrow",
                "rows": rows,
                "rows_written": written,
                "rows_committed": done.rows + rows,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "status": "committed",
            },
        )
        done.rows += rows
        done.rejected += set_aside
        done.batches += 1
        m = self.ctx.metrics
        m.batch_latency.observe(time.perf_counter() - started)
        m.batches_processed.labels(self.file_type, self.worker_id).inc()
        m.rows_read.labels(self.file_type).inc(rows)
        m.rows_staged.labels(self.file_type).inc(rows)
        m.rows_upserted.labels(self.target.label).inc(written)
        if self.ctx.progress is not None:
            self.ctx.progress.batch(str(self.job.name), rows, len(piece.payload))

    async def _commit(self, piece: _Piece, done: _Done) -> tuple[int, int, int]:
        """COPY, merge and checkpoint one batch in one transaction: (rows, rows written,
        rows set aside). If the batch fails on bad data and the contract allows bad rows,
        the good rows load and the bad ones go to ingestion_rejects, still in one transaction.
        """
        conn, claim_id, mode = self.conn, self.job.claim.manifest_id, self.job.contract.mode
        cause: BaseException | None = None
        try:
            async with conn.transaction():
                rows, written = await apply_batch(
                    conn, self.target, self.stage, mode, piece.payload, piece.fmt
                )
                await self.ctx.manifest.checkpoint(conn, claim_id, done.rows, done.rows + rows)
            return rows, written, 0
        except IngestdError as exc:
            error: IngestdError = exc
        except Exception as exc:
            error, cause = translate(exc, first_row=done.rows + 1), exc
        if piece.raw is not None and isinstance(error, FileError):
            # PostgreSQL refused the file's own bytes. Redo the batch through Arrow, the
            # reference reading: same rows, same leniency and the same messages as any
            # other file (a malformed row is then reported by the reader, with its row).
            return await self._commit(self._through_arrow(piece, done), done)
        batch = piece.batch
        budget = self.job.contract.max_bad_rows
        if batch is None or not is_bad_data(error):
            raise error from cause
        allowed = budget.allowed(done.rows + batch.num_rows) - done.rejected
        if allowed <= 0:
            raise error from cause
        async with conn.transaction():
            sorting = Sorting(conn, self.target, self.stage, mode, batch, done.rows + 1)
            written, rejects = await load_sorting_out(sorting, allowed, budget)
            await self.ctx.manifest.record_rejects(
                conn, claim_id, self.job.version, self.ctx.run_id, rejects
            )
            await self.ctx.manifest.checkpoint(
                conn, claim_id, done.rows, done.rows + batch.num_rows, len(rejects)
            )
        self.ctx.metrics.rows_rejected.labels(self.target.label).inc(len(rejects))
        log.warning(
            "rows_rejected",
            extra={"rows": len(rejects), "first_row": rejects[0].row, "error": rejects[0].reason},
        )
        return batch.num_rows, written, len(rejects)

    def _through_arrow(self, piece: _Piece, done: _Done) -> _Piece:
        assert piece.raw is not None  # noqa: S101 - only raw pieces come here
        batch = parse_segment(bytes(piece.payload), self.job.contract, piece.raw, done.rows)
        ordinal = self.stage is not None
        payload = encode_batch(batch, done.rows + 1, ordinal=ordinal)
        return _Piece(payload, CopyFormat(ordinal=ordinal), batch)


async def _prepare_target(
    conn: Connection, target: Target, pg_types: tuple[str, ...], mode: Mode, server_version: int
) -> None:
    check_mode_supported(mode, server_version)
    await ensure_table_from_headers(conn, target, pg_types)
    if mode == "upsert" and not await has_unique_key(conn, target):
        raise FileError(
            f"table {target.label} has no primary key or unique index on "
            f"({', '.join(target.pk)}), which upsert needs: add one, or use --mode merge"
        )


async def _pieces(
    reader: BatchReader, raw: RawCsv | None, rows_done: int, ordinal: bool, s: Settings
) -> AsyncIterator[_Piece]:
    """The file's batches, each read (and encoded) in a thread while the one before is in
    the database: raw segments of the file, or Arrow batches encoded by ingestd."""
    if raw is not None:
        fmt = CopyFormat(False, raw.delimiter, raw.quote, raw.pg_encoding)
        segments = raw.segments(s.chunk_size, s.memory_limit_bytes // 4)

        def produce() -> _Piece | None:
            segment = next(segments, None)
            return None if segment is None else _Piece(memoryview(segment), fmt, raw=raw)

    else:
        batches: Iterator[pa.RecordBatch] = skip_rows(iter(reader), rows_done)
        next_row = rows_done + 1

        def produce() -> _Piece | None:
            nonlocal next_row
            batch = next(batches, None)
            if batch is None:
                return None
            payload = encode_batch(batch, next_row, ordinal=ordinal)
            next_row += batch.num_rows
            return _Piece(payload, CopyFormat(ordinal=ordinal), batch)

    pending = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while (item := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(produce))
            yield item
    finally:
        # The thread cannot be interrupted; let it finish so the reader is not used twice.
        if not pending.done():
            await asyncio.shield(asyncio.wait([pending]))
        if pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: a read error after a failure is not news


def _check_unchanged(job: Job) -> None:
    now = identity(job.path)
    if now is None:
        raise FileChangedError(f"{job.name} disappeared while it was being loaded")
    if now != job.identity:
        raise FileChangedError(
            f"{job.name} changed while it was being loaded (size or mtime differ); "
            "this version is abandoned and the new one will be loaded as a new version"
        )
