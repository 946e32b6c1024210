"""Rejected rows: when a batch fails on bad data, find the bad rows and load the rest.

Like pgloader, the batch goes again in pieces inside savepoints, in two passes:

1. A staged batch (upsert, merge) first goes into the stage alone, a window of rows at a
   time, each COPY rolled back: the stage has the target's types and no constraint, so a
   row COPY refuses holds a value that does not cast, COPY names it, and the next COPY
   starts after it. Each such row costs one COPY of at most a window and no merge.
2. The rows left are loaded in pieces: COPY naming a row (the only kind an append batch
   meets, COPY straight into the target) sets it aside at once; an error without a row
   (a constraint checked in the merge) splits the piece in two until the bad row is alone.

Pieces are applied in file order, so "the last occurrence wins" still holds; a row a later
row of its key supersedes in the batch is checked only where a split separates the two.
Past the budget, the error names the first bad row over it in file order, though COPY into
a table may name a later row first (tests/integration/test_sorting_out.py holds a model).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from dataclasses import dataclass

import pyarrow as pa

from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError
from ingestd.db.manifest import Reject
from ingestd.db.merge import apply_batch
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, copy_batch, follow_target, truncate_stage
from ingestd.encode import encode_batch, raw_rows
from ingestd.exceptions import FileError, IngestdError
from ingestd.settings import BadRows, Mode

# Rows per COPY of the first pass, a window that follows how far apart refused rows are:
# each COPY encodes and sends its window whole, but the server stops at the row it refuses.
_WINDOW_FIRST, _WINDOW_MIN, _WINDOW_MAX = 1024, 64, 16384


def is_bad_data(error: IngestdError) -> bool:
    """Errors a row can cause: data exceptions (22) and integrity violations (23)."""
    code = getattr(error, "sqlstate", None) or ""
    return isinstance(error, FileError) and code.startswith(("22", "23"))


@dataclass(frozen=True)
class Sorting:
    """A batch whose rows are being sorted out, and where they go."""

    conn: Connection
    target: Target
    stage: str | None
    mode: Mode
    batch: pa.RecordBatch
    first_row: int  # the file row number of the batch's first row


@dataclass(frozen=True)
class _Rows:
    """Rows of the batch, each with its file row number (ascending; gaps where rows left)."""

    batch: pa.RecordBatch
    numbers: list[int]

    def encoded(self, lo: int, hi: int, *, ordinal: bool = True) -> memoryview:
        """CSV bytes of rows [lo, hi), each numbered with its file row (blocking)."""
        numbers = pa.array(self.numbers[lo:hi], pa.int64())
        return encode_batch(self.batch.slice(lo, hi - lo), numbers, ordinal=ordinal)

    def index(self, row: int, lo: int, hi: int) -> int | None:
        """Where file row `row` is among rows [lo, hi), if it is."""
        at = bisect.bisect_left(self.numbers, row, lo, hi)
        return at if at < hi and self.numbers[at] == row else None


_Bad = tuple[int, FileError]  # a bad row: its file row number, what PostgreSQL said
_Refused = tuple[int | None, FileError]  # the index of the row an error names, if any


class _Undo(Exception):
    """Rolls back a first-pass COPY that went through: the pass only looks."""


async def load_sorting_out(s: Sorting, allowed: int, budget: BadRows) -> tuple[int, list[Reject]]:
    """Load the good rows of the batch (inside the caller's transaction) and return
    (target rows written, rows set aside). Raises FileError past `allowed` rejects."""
    every = _Rows(s.batch, list(range(s.first_row, s.first_row + s.batch.num_rows)))
    uncast = await _refused_by_copy(s, every, allowed) if s.stage is not None else []
    rest = every
    if uncast:
        # Past the budget, the rows after the first one over it do not matter: the file fails.
        end = uncast[allowed][0] - s.first_row if len(uncast) > allowed else s.batch.num_rows
        left = {row - s.first_row for row, _ in uncast}
        keep = [i for i in range(end) if i not in left]
        rest = _Rows(s.batch.take(pa.array(keep, pa.int64())), [s.first_row + i for i in keep])
    written, bad = await _load_in_pieces(s, rest, uncast, allowed)
    bad = sorted(uncast + bad, key=lambda b: b[0])
    if len(bad) > allowed:
        row, error = bad[allowed]
        raise FileError(
            f"more bad rows than --max-bad-rows {budget} allows; row {row}: {error}",
            row=row,
            sqlstate=error.sqlstate,
        )
    return written, [_reject(s, row, error) for row, error in bad]


async def _refused_by_copy(s: Sorting, rows: _Rows, allowed: int) -> list[_Bad]:
    """The rows the stage's COPY refuses, in file order, up to the first past `allowed`;
    nothing stays staged. Stops early at an error that names no row."""
    assert s.stage is not None  # noqa: S101 - only staged batches
    target = await follow_target(s.conn, s.target, s.stage)
    found: list[_Bad] = []
    lo, end, window = 0, rows.batch.num_rows, _WINDOW_FIRST
    while lo < end and len(found) <= allowed:
        hi = min(lo + window, end)
        piece = await asyncio.to_thread(rows.encoded, lo, hi)
        try:
            async with s.conn.atomic():  # nested: a savepoint, always rolled back
                await copy_batch(s.conn, target, s.stage, piece, CopyFormat())
                raise _Undo
        except _Undo:
            lo, window = hi, min(2 * window, _WINDOW_MAX)
            continue
        except FileError as exc:
            index, error = _placed(exc, rows, lo, hi)
            if not is_bad_data(error):
                raise error from exc.__cause__
            if index is None:
                return found  # the second pass sorts it out, by halves
            found.append((rows.numbers[index], error))
            lo, window = index + 1, max(2 * (index + 1 - lo), _WINDOW_MIN)
    return found


async def _load_in_pieces(
    s: Sorting, rows: _Rows, known: list[_Bad], allowed: int
) -> tuple[int, list[_Bad]]:
    """Load `rows` piece by piece in file order: (target rows written, bad rows found).
    Stops once the rows settled so far hold more than `allowed` bad rows, with `known`."""
    known_rows = [row for row, _ in known]
    written = 0
    found: list[_Bad] = []
    found_rows: list[int] = []  # sorted: COPY may name a later row before an earlier one
    dirty = True  # whether the stage may hold rows: true of a batch's first piece, to be safe
    pieces = [(0, rows.batch.num_rows)] if rows.batch.num_rows else []
    while pieces:
        lo, hi = pieces.pop()
        # Every row before this piece is settled, but not a row of it before one COPY named:
        # COPY into a table checks its unique indexes a buffer of rows at a time.
        settled = rows.numbers[lo]
        before = bisect.bisect_left(known_rows, settled)
        if before + bisect.bisect_left(found_rows, settled) > allowed:
            break  # the first bad rows over the budget are all known: the file fails
        if dirty and s.stage is not None:
            await truncate_stage(s.conn, s.stage)  # outside the savepoint: one undone stays empty
            dirty = False
        outcome = await _try_piece(s, rows, lo, hi)
        if isinstance(outcome, int):
            written += outcome
            dirty = True
            continue
        bad, error = outcome
        if bad is None and hi - lo == 1:
            bad = lo
        if bad is None:
            mid = (lo + hi) // 2
            pieces += [(mid, hi), (lo, mid)]  # popped left first: file order
            continue
        found.append((rows.numbers[bad], error))
        bisect.insort(found_rows, rows.numbers[bad])
        pieces += [p for p in ((bad + 1, hi), (lo, bad)) if p[0] < p[1]]
    return written, found


async def _try_piece(s: Sorting, rows: _Rows, lo: int, hi: int) -> int | _Refused:
    """Rows written by rows [lo, hi) in a savepoint, or the data error that undid them
    with the index of the row it names (None: it names none in the piece)."""
    ordinal = s.stage is not None
    # Encoding is CPU work on a batch: in a thread, so the loop only waits.
    piece = await asyncio.to_thread(functools.partial(rows.encoded, lo, hi, ordinal=ordinal))
    try:
        async with s.conn.atomic():  # nested: a savepoint
            fmt = CopyFormat(ordinal=ordinal)
            _, written = await apply_batch(s.conn, s.target, s.stage, s.mode, piece, fmt)
            return written
    except FileError as exc:
        index, error = _placed(exc, rows, lo, hi)
        if not is_bad_data(error):
            raise error from exc.__cause__
        return index, error


def _placed(exc: FileError, rows: _Rows, lo: int, hi: int) -> _Refused:
    """The index among rows [lo, hi) of the row an error about that piece names (None:
    none there), and the error naming that row's number in the file."""
    if isinstance(exc, BatchError):
        # COPY counts a refused row from the piece's first record.
        index = None
        if exc.record is not None and 0 < exc.record <= hi - lo:
            index = lo + exc.record - 1
        return index, exc.at_row(None if index is None else rows.numbers[index])
    return (None if exc.row is None else rows.index(exc.row, lo, hi)), exc


def _reject(s: Sorting, row: int, error: FileError) -> Reject:
    raw = raw_rows(s.batch.slice(row - s.first_row, 1))[0]
    return Reject(row, raw, str(error), error.sqlstate)
