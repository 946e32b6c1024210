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
from ingestd.db.target import SessionState, ensure_table_from_headers, has_unique_key
from ingestd.discover import identity
from ingestd.encode import encode_batch
from ingestd.exceptions import FileError, IngestdError, Interrupted
from ingestd.metrics import Metrics
from ingestd.progress import Progress
from ingestd.read import BatchReader, open_reader, skip_rows
from ingestd.reject import is_bad_data, load_sorting_out
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
    first_row = 1
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
        rows_done, rejected, batch_idx = committed.rows, committed.rejected, committed.batches
        if rows_done:
            log.info("file_resumed", extra={"rows_committed": rows_done})
        async for batch, payload in _encoded(reader, rows_done, ordinal=stage is not None):
            if ctx.stopping.is_set():
                raise Interrupted(f"stopped after {rows_done} rows; resumes on the next run")
            _check_unchanged(job)  # one stat per batch: stop early on a file rewritten under us
            first_row = rows_done + 1
            started = time.perf_counter()
            at = _BatchAt(batch, payload, rows_done, rejected, batch_idx)
            written, set_aside = await _commit_batch(conn, job, ctx, target, stage, at)
            rows_done += batch.num_rows
            rejected += set_aside
            batch_idx += 1
            _count_batch(ctx, reader.layout.file_type, target, worker_id, at, written, started)
            if ctx.progress is not None:
                ctx.progress.batch(str(job.name), batch.num_rows, len(payload))
        _check_unchanged(job)
        await ctx.manifest.finish(conn, job.claim.manifest_id, "success", None)
        return rows_done
    except FileError as exc:
        # A read error in a file that changed under us is the change, not bad data.
        if not isinstance(exc, FileChangedError) and identity(job.path) != job.identity:
            _check_unchanged(job)
        raise
    except IngestdError:
        raise
    except Exception as exc:
        raise translate(exc, first_row=first_row) from exc


@dataclass(frozen=True)
class _BatchAt:
    """A batch and where the file stood before it."""

    batch: pa.RecordBatch
    payload: memoryview
    rows_before: int
    rejected_before: int
    index: int  # batches of this file committed before it (0 for the first)


async def _commit_batch(
    conn: Connection,
    job: Job,
    ctx: LoadContext,
    target: Target,
    stage: str | None,
    at: _BatchAt,
) -> tuple[int, int]:
    """COPY, merge and checkpoint one batch in one transaction: (rows written, rows set aside).

    If the batch fails on bad data and the contract allows bad rows, the good rows load
    and the bad ones go to ingestion_rejects, still in one transaction.
    """
    mode, claim_id = job.contract.mode, job.claim.manifest_id
    rows_after = at.rows_before + at.batch.num_rows
    cause: BaseException | None = None
    try:
        async with conn.transaction():
            written = await apply_batch(conn, target, stage, mode, at.payload)
            await ctx.manifest.checkpoint(conn, claim_id, at.rows_before, rows_after)
        return written, 0
    except IngestdError as exc:
        error: IngestdError = exc
    except Exception as exc:
        error, cause = translate(exc, first_row=at.rows_before + 1), exc
    budget = job.contract.max_bad_rows
    allowed = budget.allowed(rows_after) - at.rejected_before
    if allowed <= 0 or not is_bad_data(error):
        raise error from cause
    async with conn.transaction():
        written, rejects = await load_sorting_out(
            conn, target, stage, mode, at.batch, at.rows_before + 1, allowed, budget
        )
        await ctx.manifest.record_rejects(conn, claim_id, job.version, ctx.run_id, rejects)
        await ctx.manifest.checkpoint(conn, claim_id, at.rows_before, rows_after, len(rejects))
    ctx.metrics.rows_rejected.labels(target.label).inc(len(rejects))
    log.warning(
        "rows_rejected",
        extra={"rows": len(rejects), "first_row": rejects[0].row, "error": rejects[0].reason},
    )
    return written, len(rejects)


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


def _count_batch(
    ctx: LoadContext,
    file_type: str,
    target: Target,
    worker_id: str,
    at: _BatchAt,
    written: int,
    started: float,
) -> None:
    latency = time.perf_counter() - started
    rows = at.batch.num_rows
    m = ctx.metrics
    m.batch_latency.observe(latency)
    m.batches_processed.labels(file_type, worker_id).inc()
    m.rows_read.labels(file_type).inc(rows)
    m.rows_staged.labels(file_type).inc(rows)
    m.rows_upserted.labels(target.label).inc(written)
    log.info(
        "batch_committed",
        extra={
            "batch_idx": at.index,
            "rows": rows,
            "rows_written": written,
            "rows_committed": at.rows_before + rows,
            "latency_ms": round(latency * 1000, 1),
            "status": "committed",
        },
    )


async def _encoded(
    reader: BatchReader, rows_done: int, *, ordinal: bool
) -> AsyncIterator[tuple[pa.RecordBatch, memoryview]]:
    """(batch, COPY bytes) per batch, reading and encoding the next batch in a thread
    while the current one is in the database."""
    batches: Iterator[pa.RecordBatch] = skip_rows(iter(reader), rows_done)
    next_row = rows_done + 1

    def produce(first_row: int) -> tuple[pa.RecordBatch, memoryview] | None:
        batch = next(batches, None)
        if batch is None:
            return None
        return batch, encode_batch(batch, first_row, ordinal=ordinal)

    pending = asyncio.ensure_future(asyncio.to_thread(produce, next_row))
    try:
        while (item := await pending) is not None:
            next_row += item[0].num_rows
            pending = asyncio.ensure_future(asyncio.to_thread(produce, next_row))
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
