"""process_file: the table of contents of ingestd. Read, stage, merge and record one file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pyarrow as pa

from ingestd.binary_pieces import binary_pieces
from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.manifest import UNDEFINED_TABLE, Committed
from ingestd.db.merge import check_mode_supported
from ingestd.db.schema import Audit, Evolution, evolution_for
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, column_types
from ingestd.db.target import SessionState, ensure_table_from_headers, has_unique_key
from ingestd.db.topology import place_target
from ingestd.discover import identity
from ingestd.encode import binary_arrays, encode_batch, encode_binary
from ingestd.exceptions import FileError, Interrupted, RetryableError
from ingestd.load import (
    BatchLoader,
    FileChangedError,
    Piece,
    ReadAhead,
    Tally,
    check_unchanged,
    raw_copy_format,
    read_ahead,
    unchanged,
)
from ingestd.model import LoadContext, ManifestStatus
from ingestd.read import BatchReader, open_reader, skip_rows
from ingestd.read.columns import narrowed
from ingestd.read.raw_csv import NotRaw, RawCsv
from ingestd.read.text import refuse_nul
from ingestd.relay import Relay, may_relay
from ingestd.settings import Mode, Settings
from ingestd.split import load_split, plan_split

log = logging.getLogger(__name__)


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
    was_checked = False  # the target was checked by an earlier file of this session
    try:
        await unchanged(job)
        reader = await open_file(job, ctx.settings)
        target = Target(contract.schema, contract.table, reader.layout.columns, contract.pk)
        drift = await _evolution(conn, job, ctx, reader, target)
        types = reader.layout.pg_types
        if drift is not None:  # schema evolution: the columns the table gets, through Arrow
            reader, target, types = narrowed(reader, drift.plan.file_columns), *drift.shape
        # What the target is (partitioned, Citus): the key must fit it; read once per file.
        target = await place_target(
            conn,
            target,
            contract.mode,
            contract.create_partitions,
            ctx.settings.distributed_concurrency,
        )
        was_checked = session.checked(target, contract.mode)
        if not was_checked:
            pending = drift.adds if drift is not None else ()
            await _prepare_target(conn, target, types, contract.mode, ctx.server_version, pending)
            session.mark_checked(target, contract.mode)
        # A stage of columns still to add is made by the batch that adds them.
        stage = (
            None
            if contract.mode == "append"
            else await session.stage(conn, target, create=drift is None or not drift.adds)
        )
        # A first attempt knows its progress from the claim; a retry asks the manifest,
        # the only truth after a commit whose reply was lost.
        if committed is None:
            committed = await ctx.manifest.progress(conn, job.claim.manifest_id)
        if committed.segments is None and not committed.rows:
            if ctx.stopping.is_set():  # planning reads the whole file: not after a stop
                raise Interrupted("stopped before loading; resumes on the next run")
            committed = await plan_split(conn, job, ctx, reader.raw, committed, reader.row_groups)
        finished = False  # by the last batch's own transaction (BatchLoader.batch)
        if committed.segments is not None:
            # A large file cut into segments that idle workers load alongside this one.
            rows = await load_split(
                conn, job, ctx, target, reader.raw, committed, worker_id, reader.row_groups
            )
            written = rows - committed.rows  # append only: every row read is written
        else:
            load = BatchLoader(
                conn, job, ctx, target, stage, worker_id, reader.layout.file_type, drift
            )
            rows, finished, written = await _load_in_order(load, reader, committed)
        if not finished:
            await unchanged(job)
            await ctx.manifest.finish(conn, job.claim.manifest_id, ManifestStatus.SUCCESS, None)
        if ctx.upkeep is not None:
            # Rows written, not read: a file loaded again unchanged writes none and needs
            # no ANALYZE (on the bench's 1M rows it cost 0.5-0.75 s of server CPU).
            await ctx.upkeep.after_file(
                conn, target.qualified, target.label, contract.mode, written
            )
        return rows
    except FileError as exc:
        # A read error in a file that changed under us is the change, not bad data.
        if not isinstance(exc, FileChangedError) and identity(job.path) != job.identity:
            check_unchanged(job)
        if exc.sqlstate == UNDEFINED_TABLE and was_checked:
            # The table this session checked was dropped or renamed since: the file is not
            # at fault. The retry checks the target again (and makes it, as a first file).
            session.forget_target(target, contract.mode)
            raise RetryableError(
                f"table {target.label} is gone since this session checked it (dropped or "
                "renamed?): checking it again",
                sqlstate=exc.sqlstate,
            ) from exc
        raise


async def open_file(job: Job, s: Settings) -> BatchReader:
    """The file's reader, opened in a thread. The reader sorts what it reads into FileError;
    an OSError from the open itself (its mode changed since the checksum) is the file's
    problem too, never the database's weather."""
    try:
        return await asyncio.to_thread(
            open_reader, job.path, job.contract, s.chunk_size, s.memory_limit_bytes
        )
    except FileNotFoundError:
        check_unchanged(job)  # gone: FileChangedError, the file is not failed
        raise
    except OSError as exc:
        raise FileError(f"cannot read {job.name}: {exc.strerror or exc}") from exc


async def _load_in_order(
    load: BatchLoader, reader: BatchReader, committed: Committed
) -> tuple[int, bool, int]:
    """The file's batches one after another, after those already committed: its rows,
    whether the last batch's transaction finished the file (marked it success), and the
    target rows this run's batches wrote."""
    s = load.ctx.settings
    tally = Tally(committed.rows, committed.rejected, committed.batches)
    if tally.rows:
        log.info("file_resumed", extra={"rows_committed": tally.rows})
    # A file's own bytes go as they are when nothing needs changing (a fresh start:
    # a resume finds its place by counting rows, which the Arrow reader does).
    raw = reader.raw if s.raw_csv and not tally.rows else None
    # Parquet's typed values can go as binary COPY where the target's types take them
    # exactly (encode.binary_arrays); the rest as CSV text.
    binary = s.binary_copy and reader.layout.file_type == "parquet" and load.drift is None
    types = await column_types(load.conn, load.target) if binary else ()
    while True:
        try:
            pieces = _pieces(reader, raw, tally.rows, load.stage is not None, types, s)
            tally.last = pieces.exhausted
            if may_relay(load):
                # An idle worker stages the next batch while this one merges.
                await Relay(load, pieces, tally).run()
            else:
                async for piece in pieces:
                    await load.batch(piece, tally)
            return tally.rows, tally.finished, tally.written
        except NotRaw as why:
            log.info("raw_csv_fallback", extra={"reason": str(why), "rows_committed": tally.rows})
            raw = None  # the rest through Arrow, after the rows committed so far


async def _evolution(
    conn: Connection, job: Job, ctx: LoadContext, reader: BatchReader, target: Target
) -> Evolution | None:
    """The file's schema drift under its contract's schema_evolution (None: none)."""
    layout = reader.layout
    manifest_schema = ctx.manifest.table_ref[0]
    audit = Audit(manifest_schema, job.version.filename, job.claim.manifest_id, ctx.run_id)
    typed = job.contract.preserve_types and layout.file_type in ("parquet", "ndjson")
    return await evolution_for(
        conn, job.contract, target, layout.pg_types, audit, ctx.server_version, typed
    )


async def _prepare_target(
    conn: Connection,
    target: Target,
    pg_types: tuple[str, ...],
    mode: Mode,
    server_version: int,
    pending: tuple[str, ...] = (),
) -> None:
    check_mode_supported(mode, server_version)
    await ensure_table_from_headers(conn, target, pg_types, pending)
    if mode == "upsert" and not await has_unique_key(conn, target):
        raise FileError(
            f"table {target.label} has no primary key or unique index on "
            f"({', '.join(target.pk)}), which upsert needs: add one, or use --mode merge"
        )


def _pieces(
    reader: BatchReader,
    raw: RawCsv | None,
    rows_done: int,
    ordinal: bool,
    types: tuple[str | None, ...],
    s: Settings,
) -> ReadAhead:
    """The file's batches, each read (and encoded) in a thread while the one before is in
    the database: raw batches of the file's own bytes, or Arrow batches encoded by ingestd."""
    if raw is not None:
        fmt = raw_copy_format(raw)
        views = raw.batches(s.chunk_size, s.memory_limit_bytes // 4)

        def produce() -> Piece | None:
            view = next(views, None)
            return None if view is None else Piece(view, fmt, raw=raw)

    elif types and reader.row_groups is not None and reader.row_groups.decoded is not None:
        # Parquet as binary COPY: encoded as decoded, no Arrow batch of a piece is kept.
        groups = reader.row_groups
        produce = binary_pieces(
            groups, rows_done, groups.total, types, ordinal=ordinal,
            chunk_rows=s.chunk_size, max_bytes=s.memory_limit_bytes // 4,
        )  # fmt: skip

    else:
        batches: Iterator[pa.RecordBatch] = skip_rows(iter(reader), rows_done)
        next_row = rows_done + 1

        def produce() -> Piece | None:
            nonlocal next_row
            batch = next(batches, None)
            if batch is None:
                return None
            refuse_nul(batch, next_row)
            arrays = binary_arrays(batch, types) if types else None
            if arrays is not None:
                payload = encode_binary(arrays, next_row, ordinal=ordinal)
                fmt = CopyFormat(ordinal=ordinal, binary_types=types)
            else:
                payload = encode_batch(batch, next_row, ordinal=ordinal)
                fmt = CopyFormat(ordinal=ordinal)
            next_row += batch.num_rows
            return Piece(payload, fmt, batch)

    return read_ahead(produce)
