"""One batch, start to commit: COPY, merge and checkpoint the manifest in one transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError
from ingestd.db.merge import Turn, apply_batch
from ingestd.db.partitions import create_partitions, name_unrouted_row
from ingestd.db.schema import Evolution
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, TypesMovedError
from ingestd.db.topology import hold_write_slot
from ingestd.discover import identity
from ingestd.encode import encode_batch
from ingestd.exceptions import FileError, Interrupted
from ingestd.model import LoadContext
from ingestd.read.csv_reader import parse_segment
from ingestd.read.raw_csv import RawCsv
from ingestd.reject import Sorting, is_bad_data, load_sorting_out

log = logging.getLogger(__name__)


class FileChangedError(FileError):
    """The file changed or vanished while it was being loaded."""


async def unchanged(job: Job) -> None:
    """check_unchanged from the event loop: a local file's look is one stat, made here; a
    store's may be a request, made in a thread."""
    if isinstance(job.path, Path):
        check_unchanged(job)
    else:
        await asyncio.to_thread(check_unchanged, job)


def check_unchanged(job: Job) -> None:
    """Raise FileChangedError if the file is gone or its identity (a local file: size,
    mtime, inode) moved."""
    now = identity(job.path)
    if now is None:
        raise FileChangedError(f"{job.name} disappeared while it was being loaded")
    if now != job.identity:
        # A store says what its versions are told by (an object store: the ETag).
        how = getattr(
            getattr(job.path, "storage", None),
            "changed_how",
            "size, mtime or inode differ",
        )
        raise FileChangedError(
            f"{job.name} changed while it was being loaded ({how}); "
            "this version is abandoned and the new one will be loaded as a new version"
        )


@dataclass
class Tally:
    """Where a load stands: rows consumed, of them set aside, batches committed.

    A load that starts in the middle of a file (a segment) does not know how many rows
    come before it; `before` counts them, only when a message needs a row number.
    """

    rows: int
    rejected: int
    batches: int
    before: Callable[[], Awaitable[int]] | None = None
    # Asked just before a batch commits: True if nothing follows it (ReadAhead.exhausted).
    last: Callable[[], bool] | None = None
    finished: bool = False  # the last batch's transaction marked the file success
    written: int = 0  # target rows the batches inserted or updated (upkeep's count)

    async def rows_before(self) -> int:
        """Rows of the file before the next batch."""
        return self.rows + (await self.before() if self.before is not None else 0)


@dataclass(frozen=True)
class Span:
    """The bytes a raw piece covers in one segment of a split file."""

    segment: int
    start: int
    end: int


def _via(fmt: CopyFormat) -> str:
    return "binary" if fmt.binary_types else "arrow"


def raw_copy_format(raw: RawCsv) -> CopyFormat:
    """How COPY must read a file's own bytes: its dialect and encoding, no row ordinal."""
    return CopyFormat(False, raw.delimiter, raw.quote, raw.pg_encoding)


@dataclass(frozen=True)
class Piece:
    """What one batch sends: an Arrow batch encoded by ingestd, or a raw segment of the file
    (its Arrow form is only made if its rows must be sorted out)."""

    payload: memoryview
    fmt: CopyFormat
    batch: pa.RecordBatch | None = None
    raw: RawCsv | None = None
    span: Span | None = None  # set for a segment of a split file: checkpointed by bytes
    # A binary piece keeps no Arrow batch: its rows are read again for a redo as text.
    rows_again: Callable[[], pa.RecordBatch | None] | None = None


@dataclass(frozen=True)
class BatchLoader:
    """The fixed parts of loading one file (or one segment of it) on one connection."""

    conn: Connection
    job: Job
    ctx: LoadContext
    target: Target
    stage: str | None
    worker_id: str
    file_type: str
    drift: Evolution | None = None  # schema evolution: columns to add, rescue
    partitions_made: list[str] = field(default_factory=list)  # by create_partitions
    partitions_tried: set[str] = field(default_factory=set)  # refusals it went again for

    async def batch(self, piece: Piece, tally: Tally, turn: Turn | None = None) -> None:
        """One batch, start to commit; advances `tally`. When `tally.last` says nothing
        follows, the same transaction marks the file success, after one more look that it
        did not change (one commit a file less). `turn` (relay.Relay) is awaited once the
        batch is staged, before it merges or reads `tally`: the batch before has committed."""
        if self.ctx.stopping.is_set():
            raise Interrupted(f"stopped after {tally.rows} rows; resumes on the next run")
        await unchanged(self.job)  # one look per batch: stop early on a file rewritten under us
        started = time.perf_counter()
        try:
            rows, written, set_aside = await self._commit(piece, tally, turn)
        except FileError:
            if self.partitions_made:
                # Kept on purpose: other files (and this one, retried) may need them.
                log.warning(
                    "partitions_kept",
                    extra={
                        "table": self.target.label,
                        "partitions": list(self.partitions_made),
                        "reason": "the file failed after create_partitions made these "
                        "partitions for it; they stay (other files may need them)",
                    },
                )
            raise
        extra: dict[str, object] = {
            "batch_idx": tally.batches,
            "via": "copy" if piece.raw is not None else _via(piece.fmt),
            "rows": rows,
            "rows_written": written,
            "rows_committed": tally.rows + rows,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "status": "committed",
        }
        if piece.span is not None:
            extra["segment"] = piece.span.segment + 1
        log.info("batch_committed", extra=extra)
        tally.rows += rows
        tally.rejected += set_aside
        tally.batches += 1
        tally.written += written
        m = self.ctx.metrics
        m.batch_latency.observe(time.perf_counter() - started)
        m.batches_processed.labels(self.file_type, self.worker_id).inc()
        m.rows_read.labels(self.file_type).inc(rows)
        m.rows_staged.labels(self.file_type).inc(rows)
        m.rows_upserted.labels(self.target.label).inc(written)
        if self.ctx.progress is not None:
            self.ctx.progress.batch(str(self.job.name), rows, len(piece.payload))

    async def _commit(
        self, piece: Piece, tally: Tally, turn: Turn | None = None
    ) -> tuple[int, int, int]:
        """COPY, merge and checkpoint one batch in one transaction: (rows, rows written,
        rows set aside). If the batch fails on bad data and the contract allows bad rows,
        the good rows load and the bad ones go to ingestion_rejects, still in one transaction.
        """
        conn, claim_id, mode = self.conn, self.job.claim.manifest_id, self.job.contract.mode
        try:
            rows, written = await self._commit_whole(piece, tally, turn)
            return rows, written, 0
        except FileChangedError:
            raise  # not the batch's data: the version is abandoned
        except FileError as exc:
            refused = exc
        except TypesMovedError:
            refused = None
        if turn is not None:
            await turn()  # what follows counts rows from tally: the batches before are in
        if piece.fmt.binary_types and (piece.batch is not None or piece.rows_again is not None):
            # Binary COPY is only a faster spelling: refused (or the types moved), the
            # batch goes again as CSV text, so what it means and what a refusal says
            # (row, column, rejects) are the text path's own.
            return await self._commit(await self._as_text(piece, tally), tally, turn)
        assert refused is not None  # noqa: S101 - only binary pieces meet moved types
        if piece.raw is not None:
            # PostgreSQL refused the file's own bytes. Redo the batch through Arrow, the
            # reference reading: same rows, same leniency and the same messages as any
            # other file (a malformed row is then reported by the reader, with its row).
            before = await tally.rows_before()
            return await self._commit(await self._through_arrow(piece, before), tally, turn)
        unit = self.job.contract.create_partitions
        if unit:
            made = await create_partitions(conn, self.target, unit, refused, piece.batch)
            self.partitions_made.extend(made.names)
            # Nothing made but "a partition holds the row now": go again once per refusal,
            # so a misjudged bound can never loop.
            fresh = bool(made.names) or str(refused) not in self.partitions_tried
            self.partitions_tried.add(str(refused))
            if made.again and fresh:
                return await self._commit(piece, tally, turn)  # again, with those it lacked
        refused = await name_unrouted_row(conn, self.target, piece.batch, refused)
        error = refused
        if isinstance(refused, BatchError):  # COPY counted its row from the batch's first
            error = refused.at(await tally.rows_before() + 1)
        batch = piece.batch
        budget = self.job.contract.max_bad_rows
        sortable = self.drift is None or self.drift.sortable
        if batch is None or not is_bad_data(error) or piece.span is not None or not sortable:
            raise error from refused.__cause__
        allowed = budget.allowed(tally.rows + batch.num_rows) - tally.rejected
        if allowed <= 0:
            raise error from refused.__cause__
        async with conn.atomic():
            await hold_write_slot(conn, self.target)
            sorting = Sorting(conn, self.target, self.stage, mode, batch, tally.rows + 1)
            written, rejects = await load_sorting_out(sorting, allowed, budget)
            await self.ctx.manifest.record_rejects(
                conn, claim_id, self.job.version, self.ctx.run_id, rejects
            )
            await self.ctx.manifest.checkpoint(
                conn, claim_id, tally.rows, tally.rows + batch.num_rows, len(rejects)
            )
        self.ctx.metrics.rows_rejected.labels(self.target.label).inc(len(rejects))
        log.warning(
            "rows_rejected",
            extra={"rows": len(rejects), "first_row": rejects[0].row, "error": rejects[0].reason},
        )
        return batch.num_rows, written, len(rejects)

    async def _commit_whole(
        self, piece: Piece, tally: Tally, turn: Turn | None = None
    ) -> tuple[int, int]:
        """The batch as it is, in one transaction: (rows, rows written)."""
        conn, mode = self.conn, self.job.contract.mode
        async with conn.atomic():
            await hold_write_slot(conn, self.target)
            if self.drift is None:
                rows, written = await apply_batch(
                    conn, self.target, self.stage, mode, piece.payload, piece.fmt, turn
                )
            else:  # never relayed (relay.may_relay): its DDL would wait on the other's lock
                rows, written = await self.drift.apply(
                    conn, self.target, self.stage, mode, piece.payload, piece.fmt
                )
            final = await self._checkpoint(piece, tally, rows)
        tally.finished = bool(final)
        if self.drift is not None:
            m = self.ctx.metrics  # committed: log and count its changes
            self.drift.settle(m.schema_changes, m.rows_rescued)
        return rows, written

    async def _checkpoint(self, piece: Piece, tally: Tally, rows: int) -> bool:
        """Record the batch in the manifest (in its transaction); True if that also ended
        the file as success (the batch is its last)."""
        manifest, claim_id = self.ctx.manifest, self.job.claim.manifest_id
        span = piece.span
        if span is None:
            final = tally.last is not None and tally.last()
            if final:
                # The look pipeline.process_file makes after the last batch, made before
                # this commit: a file changed under us rolls this batch back.
                await unchanged(self.job)
            await manifest.checkpoint(
                self.conn, claim_id, tally.rows, tally.rows + rows, last=final
            )
            return final
        await manifest.checkpoint_segment(
            self.conn, claim_id, span.segment, span.start, span.end, rows
        )
        return False

    async def _as_text(self, piece: Piece, tally: Tally) -> Piece:
        batch = piece.batch
        if batch is None and piece.rows_again is not None:
            batch = await asyncio.to_thread(piece.rows_again)
            await unchanged(self.job)  # read again: still the version the batch was made of
            if batch is None:
                raise FileChangedError(
                    f"{self.job.name} changed while it was being loaded (its rows read "
                    "again are not those sent); this version is abandoned and the new one "
                    "will be loaded as a new version"
                )
        assert batch is not None  # noqa: S101 - binary pieces carry their batch or rows
        first, ordinal = await tally.rows_before() + 1, self.stage is not None
        payload = await asyncio.to_thread(encode_batch, batch, first, ordinal=ordinal)
        return Piece(payload, CopyFormat(ordinal=ordinal), batch, span=piece.span)

    async def _through_arrow(self, piece: Piece, before: int) -> Piece:
        """A raw piece parsed and encoded by ingestd, in a thread: the loop only waits."""
        raw = piece.raw
        assert raw is not None  # noqa: S101 - only raw pieces come here
        ordinal = self.stage is not None

        def parse() -> Piece:
            batch = parse_segment(bytes(piece.payload), self.job.contract, raw, before)
            payload = encode_batch(batch, before + 1, ordinal=ordinal)
            return Piece(payload, CopyFormat(ordinal=ordinal), batch, span=piece.span)

        return await asyncio.to_thread(parse)


class ReadAhead:
    """The pieces `produce` makes (None: no more), each made in a thread while the one
    before is in the database; `exhausted` says, without waiting, that the piece in hand
    was the last (its batch can then finish the file in its own transaction)."""

    def __init__(self, produce: Callable[[], Piece | None]):
        self._produce = produce
        self._pending: asyncio.Future[_Ahead] | None = None
        self._pieces = self._run()

    def __aiter__(self) -> ReadAhead:
        return self

    async def __anext__(self) -> Piece:
        return await anext(self._pieces)

    async def aclose(self) -> None:
        """Stop reading (an abandoned load): the thread in flight is let finish."""
        await self._pieces.aclose()

    def exhausted(self) -> bool:
        """True once the next read has ended the file: nothing follows the piece in hand."""
        pending = self._pending
        return (
            pending is not None
            and pending.done()
            and not pending.cancelled()
            and pending.exception() is None
            and pending.result()[0] is None
        )

    async def _run(self) -> AsyncGenerator[Piece, None]:
        pending = self._pending = self._read(_UNREAD)
        try:
            while True:
                item, after = await pending
                if item is None:
                    return
                pending = self._pending = self._read(after)
                yield item
        finally:
            # The thread cannot be interrupted; let it finish so the reader is not used twice.
            if not pending.done():
                await asyncio.shield(asyncio.wait([pending]))
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: a read error after a failure is not news

    def _read(self, after: Piece | _Unread | BaseException | None) -> asyncio.Future[_Ahead]:
        """The next piece: read in a thread, or the one a hop read already (no hop)."""
        if isinstance(after, _Unread):
            return asyncio.ensure_future(asyncio.to_thread(self._ahead))
        done: asyncio.Future[_Ahead] = asyncio.get_running_loop().create_future()
        if isinstance(after, BaseException):
            done.set_exception(after)
        else:
            done.set_result((after, _UNREAD))
        return done

    def _ahead(self) -> _Ahead:
        """One piece and, when it is small (a small file is one piece), the read after it
        in the same hop to a thread: the end of a small file is then known at once."""
        piece = self._produce()
        if piece is None or len(piece.payload) >= _READ_ON_BYTES:
            return piece, _UNREAD
        try:
            return piece, self._produce()
        except Exception as exc:  # raised where that read's piece is asked for, as before
            return piece, exc


class _Unread:
    """The piece after is not read yet."""


_UNREAD = _Unread()
# A piece below this is read on from in the same hop: it waits in hand with the next one
# (at most this much more memory than a read ahead of one piece).
_READ_ON_BYTES = 1 << 20
_Ahead = tuple[Piece | None, Piece | _Unread | BaseException | None]


def read_ahead(produce: Callable[[], Piece | None]) -> ReadAhead:
    """The pieces `produce` makes (None: no more), each made in a thread while the one
    before is in the database."""
    return ReadAhead(produce)
