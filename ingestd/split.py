"""Split: one large file cut into row-aligned segments that several workers load at once.

Only for append (rows of different segments commit in any order) of a CSV file whose own
bytes go to COPY (a segment is a byte range of the file) or of a Parquet file of several
row groups (a segment is a range of whole row groups, counted in rows: its first row's
number is known from the footer), and only when no bad rows are allowed (one budget for
the whole file). The plan (each segment's end) and each segment's progress (the byte, or
for Parquet the row, its next batch starts at) live in the file's manifest row, and every
batch advances its segment in its own transaction:
whichever worker loads a batch, it commits once, and after a crash every segment resumes
where it stopped, even if the next run has fewer workers.

The worker that claimed the file offers the rest to idle workers through the work queue
(a Help item) and loads segments itself until none is left, so a split never waits on a
worker that is busy elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

from ingestd.binary_pieces import binary_pieces
from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.manifest import Committed, Segments
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, column_types
from ingestd.defaults import client_cores, server_is_local
from ingestd.encode import encode_batch
from ingestd.exceptions import FileError, Interrupted
from ingestd.load import (
    BatchLoader,
    Piece,
    Span,
    Tally,
    raw_copy_format,
    read_ahead,
)
from ingestd.logs import bound
from ingestd.model import Help, LoadContext
from ingestd.read.batches import Limits, RowGroups
from ingestd.read.csv_reader import parse_segment, row_too_large
from ingestd.read.raw_csv import NotRaw, RawCsv, count_rows, split_points
from ingestd.read.text import refuse_nul
from ingestd.storage.zip import is_member

log = logging.getLogger(__name__)

# Manifest id -> the byte before which plan_split found every quote plain, for the
# load_split that follows it in the same run (a resumed plan checks every piece).
_CHECKED: dict[int, int] = {}


async def plan_split(
    conn: Connection,
    job: Job,
    ctx: LoadContext,
    raw: RawCsv | None,
    committed: Committed,
    groups: RowGroups | None = None,
) -> Committed:
    """Cut a fresh, large append (raw CSV, or Parquet of several row groups) into segments
    and record the plan in the manifest; returns the progress to follow (unchanged when
    the file is not split)."""
    s, contract = ctx.settings, job.contract
    # Parquet is compressed: its size is its row groups' data, as a CSV file's is its bytes.
    size = job.version.filesize if groups is None else groups.data_bytes
    parts = min(s.concurrency, int(size // s.split_bytes)) if s.split_bytes else 0
    if groups is not None and not s.is_given("split_mb") and server_is_local(s.dsn or ""):
        # Each Parquet segment's COPY needs a core beside the one the client reads and
        # encodes on (one reader at a time): a server on this host has cores - 1 for them.
        # Measured on 2 cores: 2 segments cost ~0.9 s more server CPU than one connection
        # for 1M rows and were slower (bench, quiet machine: 3.74 s against 3.22 s).
        parts = min(parts, client_cores() - 1)
    budget = contract.max_bad_rows
    if (
        parts < 2
        or ctx.offer is None
        or contract.mode != "append"
        or budget.count
        or budget.ratio
        or is_member(job.path)  # a stream: read once, from the top
    ):
        return committed
    if raw is None and groups is not None:
        return await _plan(conn, job, ctx, committed, _row_group_cuts(groups.rows, parts))
    if raw is None or not s.raw_csv:
        return committed
    try:
        ends = await asyncio.to_thread(split_points, raw, parts, s.memory_limit_bytes // 4)
    except NotRaw as why:
        # Row ends found by counting quotes would be wrong: one pass, through Arrow from
        # where COPY would first read otherwise.
        log.info("file_not_split", extra={"reason": str(why)})
        return committed
    committed = await _plan(conn, job, ctx, committed, ends, raw.start)
    if committed.segments is not None:
        _CHECKED[job.claim.manifest_id] = ends[-2]
    return committed


async def _plan(
    conn: Connection,
    job: Job,
    ctx: LoadContext,
    committed: Committed,
    ends: list[int],
    start: int = 0,
) -> Committed:
    if len(ends) < 2:
        return committed
    plan = Segments(tuple(ends), (start, *ends[:-1]))
    committed = await ctx.manifest.plan_segments(conn, job.claim.manifest_id, plan)
    if committed.segments is not None:
        log.info("file_split", extra={"segments": len(committed.segments.ends)})
    return committed


def _row_group_cuts(rows: tuple[int, ...], parts: int) -> list[int]:
    """Segment ends (in rows) at the row-group boundaries nearest to equal shares: a
    segment is whole row groups, each read once; one row group is never cut."""
    bounds, at = [], 0
    for n in rows:
        at += n
        bounds.append(at)
    total = at
    # A segment far below its share (row groups of very different sizes) would cost a
    # worker and a COPY for a few rows: its cut is dropped, the rows go with a neighbour.
    floor = max(1, total // (parts * 4))
    ends: list[int] = []
    for k in range(1, parts):
        share = total * k // parts
        cut = min(bounds[:-1], key=lambda b: abs(b - share), default=total)
        before = ends[-1] if ends else 0
        if cut - before >= floor and total - cut >= floor:
            ends.append(cut)
    return [*ends, total] if total else []


async def load_split(
    conn: Connection,
    job: Job,
    ctx: LoadContext,
    target: Target,
    raw: RawCsv | None,
    committed: Committed,
    worker_id: str,
    groups: RowGroups | None = None,
) -> int:
    """Load what is left of a split file with any idle workers; returns the file's rows."""
    assert committed.segments is not None  # noqa: S101 - only split files come here
    source: RawCsv | RowGroups | None = raw if raw is not None else groups
    if isinstance(source, RowGroups) and committed.segments.ends[-1] != source.total:
        source = None  # not this file's plan: its segments end elsewhere
    if source is None or job.contract.mode != "append":
        raise FileError(
            "an earlier run split this file into segments, and its contract no longer allows "
            "that (append of a CSV whose columns are loaded as they are, or of a Parquet "
            "file's columns as they are): restore the contract, or load the file again from "
            "the start with --no-resume"
        )
    checked = _CHECKED.pop(job.claim.manifest_id, 0)
    types: tuple[str | None, ...] = ()
    if isinstance(source, RowGroups) and ctx.settings.binary_copy:
        types = await column_types(conn, target)  # what binary COPY is encoded for
    split = SplitLoad(job, ctx, target, source, committed.segments, checked, types)
    if committed.rows:
        log.info("file_resumed", extra={"rows_committed": committed.rows})
    for _ in range(min(split.left, ctx.settings.concurrency) - 1):
        if ctx.offer is None or not ctx.offer(Help(split)):
            break
    await split.take_part(conn, worker_id)
    await split.finished()
    return (await ctx.manifest.progress(conn, job.claim.manifest_id)).rows


class _Stopped(Exception):
    """Another participant failed: stop before the next batch, quietly."""


class SplitLoad:
    """The segments of one file still to load, handed out one at a time to whoever asks."""

    def __init__(
        self,
        job: Job,
        ctx: LoadContext,
        target: Target,
        source: RawCsv | RowGroups,
        segments: Segments,
        plain_until: int = 0,
        types: tuple[str | None, ...] = (),
    ):
        self.job = job
        self._plain_until = plain_until
        self._ctx = ctx
        self._target = target
        self._source = source
        self._types = types  # the target's, for binary COPY of Parquet (empty: as text)
        # Parquet segments read and encode one at a time: the server's COPY is what runs
        # side by side, and readers taking turns keep one reader's memory, not one each.
        self._reading = threading.Lock()
        self._segments = segments
        self._todo = deque(
            k
            for k, (at, end) in enumerate(zip(segments.done, segments.ends, strict=True))
            if at < end
        )
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.error: BaseException | None = None

    @property
    def left(self) -> int:
        """Segments nobody has taken yet."""
        return len(self._todo)

    def fail(self, error: BaseException) -> None:
        """Record the first failure; every participant stops before its next batch."""
        if self.error is None:
            self.error = error

    async def run(self, conn: Connection, worker_id: str) -> None:
        """Load segments on this connection until none is left or a participant failed."""
        while self.error is None and self._todo:
            segment = self._todo.popleft()
            self._running += 1
            self._idle.clear()
            try:
                await self._load(conn, worker_id, segment)
            except _Stopped:
                return
            finally:
                self._running -= 1
                if not self._running:
                    self._idle.set()

    async def take_part(self, conn: Connection, worker_id: str) -> bool:
        """run(), with a failure recorded for the file's owner to raise from finished().
        Returns False if it failed (the connection may be unusable)."""
        try:
            await self.run(conn, worker_id)
        except asyncio.CancelledError:
            self.fail(Interrupted("stopped while loading segments; resumes on the next run"))
            raise
        except Exception as exc:  # relayed, not sorted: the owner raises it from finished()
            self.fail(exc)
            return False
        return True

    async def help(self, conn: Connection, worker_id: str) -> bool:
        """take_part() for a helping worker, its log lines naming the file."""
        with bound(file=str(self.job.name), worker_id=worker_id):
            return await self.take_part(conn, worker_id)

    async def finished(self) -> None:
        """Wait until no participant is loading; raise the first failure, if any."""
        await self._idle.wait()
        if self.error is not None:
            raise self.error

    async def _load(self, conn: Connection, worker_id: str, segment: int) -> None:
        start = self._segments.done[segment]
        end = self._segments.ends[segment]
        raw = self._source
        if isinstance(raw, RowGroups):
            await self._load_rows(conn, worker_id, segment, raw, start, end)
            return
        loader = BatchLoader(conn, self.job, self._ctx, self._target, None, worker_id, "csv")

        # Rows of the file before this load's first byte: counted at most once, and only
        # when a message or the Arrow fallback needs a row number.
        @functools.cache
        def rows_before_start() -> int:
            return count_rows(raw, start)

        async def before() -> int:
            return await asyncio.to_thread(rows_before_start)

        tally = Tally(0, 0, 0, before)
        strict = self._ctx.settings.raw_csv  # else every piece is parsed by Arrow
        position = start
        while True:
            try:
                pieces = self._pieces(segment, position, end, strict, rows_before_start, tally)
                async for piece in pieces:
                    if self.error is not None:
                        raise _Stopped
                    await loader.batch(piece, tally)
                    assert piece.span is not None  # noqa: S101 - segment pieces have spans
                    position = piece.span.end
                return
            except NotRaw as why:
                log.info("raw_csv_fallback", extra={"reason": str(why), "segment": segment + 1})
                strict = False  # the rest of this segment through Arrow

    async def _load_rows(
        self,
        conn: Connection,
        worker_id: str,
        segment: int,
        groups: RowGroups,
        start: int,
        end: int,
    ) -> None:
        """A Parquet segment: rows [start, end) of the file, checkpointed by row number."""
        loader = BatchLoader(conn, self.job, self._ctx, self._target, None, worker_id, "parquet")

        async def before() -> int:
            return start

        tally = Tally(0, 0, 0, before)
        # The file's segments share one worker's memory: batches of 1/n of the limits.
        share, s = len(self._segments.ends), self._ctx.settings
        if self._types and groups.decoded is not None:
            made = binary_pieces(
                groups, start, end, self._types, ordinal=False, segment=segment,
                chunk_rows=max(1, s.chunk_size // share),
                max_bytes=s.memory_limit_bytes // 4 // share,
            )  # fmt: skip
        else:
            made = self._text_pieces(groups, segment, start, end, share)

        def produce() -> Piece | None:
            with self._reading:
                return made()

        async for piece in read_ahead(produce):
            if self.error is not None:
                raise _Stopped
            await loader.batch(piece, tally)

    def _text_pieces(
        self, groups: RowGroups, segment: int, start: int, end: int, share: int
    ) -> Callable[[], Piece | None]:
        """A Parquet segment's pieces as CSV text (binary COPY is off)."""
        batches = groups.read(start, end, share)
        position = start

        def made() -> Piece | None:
            nonlocal position
            batch = next(batches, None)
            if batch is None:
                return None
            refuse_nul(batch, position + 1)
            payload = encode_batch(batch, position + 1, ordinal=False)
            span = Span(segment, position, position + batch.num_rows)
            position = span.end
            return Piece(payload, CopyFormat(ordinal=False), batch, span=span)

        return made

    def _pieces(
        self,
        segment: int,
        start: int,
        end: int,
        strict: bool,
        rows_before_load: Callable[[], int],
        tally: Tally,
    ) -> AsyncIterator[Piece]:
        """The segment's pieces from byte `start`: raw bytes for COPY, or (not strict) parsed
        by Arrow and encoded by ingestd, which copes with what COPY would misread."""
        raw, s = self._source, self._ctx.settings
        assert isinstance(raw, RawCsv)  # noqa: S101 - Parquet segments are _load_rows'
        position = start
        if strict:
            fmt = raw_copy_format(raw)
            pieces = raw.batches(
                s.chunk_size, s.memory_limit_bytes // 4, start, end, self._plain_until
            )

            def produce() -> Piece | None:
                nonlocal position
                view = next(pieces, None)
                if view is None:
                    return None
                span = Span(segment, position, position + view.nbytes)
                position = span.end
                return Piece(view, fmt, raw=raw, span=span)

        else:
            limits = Limits(s.chunk_size, s.memory_limit_bytes)
            pieces = raw.pieces(s.chunk_size, limits.max_block_bytes, start, end)
            rows_before: int | None = None

            def produce() -> Piece | None:
                nonlocal position, rows_before
                if rows_before is None:  # the rows committed by this load come after
                    rows_before = rows_before_load() + tally.rows
                try:
                    view = next(pieces, None)
                except NotRaw:
                    raise row_too_large(limits, rows_before) from None
                if view is None:
                    return None
                batch = parse_segment(bytes(view), self.job.contract, raw, rows_before)
                refuse_nul(batch, rows_before + 1)
                payload = encode_batch(batch, rows_before + 1, ordinal=False)
                span = Span(segment, position, position + view.nbytes)
                position = span.end
                rows_before += batch.num_rows
                return Piece(payload, CopyFormat(ordinal=False), batch, span=span)

        return read_ahead(produce)
