"""Rejected rows: when a batch fails on bad data, find the bad rows and load the rest.

Like pgloader: the batch is retried in pieces inside savepoints. COPY names the row of a
value that does not cast, so that row is set aside at once; an error without a row (a
constraint checked in the merge) splits the piece in two until the bad row is alone.
Pieces are applied in file order, so "the last occurrence wins" still holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pyarrow as pa

from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError
from ingestd.db.manifest import Reject
from ingestd.db.merge import apply_batch
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, truncate_stage
from ingestd.encode import encode_batch, raw_rows
from ingestd.exceptions import FileError, IngestdError
from ingestd.settings import BadRows, Mode


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


async def load_sorting_out(s: Sorting, allowed: int, budget: BadRows) -> tuple[int, list[Reject]]:
    """Load the good rows of the batch (inside the caller's transaction) and return
    (target rows written, rows set aside). Raises FileError past `allowed` rejects."""
    written = 0
    rejects: list[Reject] = []
    pieces = [(0, s.batch.num_rows)]
    while pieces:
        lo, hi = pieces.pop()
        error = await _try_piece(s, lo, hi)
        if isinstance(error, int):
            written += error
            continue
        bad = _named_row(error, s.first_row, lo, hi)
        if bad is None and hi - lo == 1:
            bad = lo
        if bad is None:
            mid = (lo + hi) // 2
            pieces += [(mid, hi), (lo, mid)]  # popped left first: file order
            continue
        rejects.append(_reject(s.batch, s.first_row, bad, error))
        if len(rejects) > allowed:
            raise FileError(
                f"more bad rows than --max-bad-rows {budget} allows; row {s.first_row + bad}: "
                f"{error}",
                row=s.first_row + bad,
                sqlstate=error.sqlstate,
            )
        pieces += [p for p in ((bad + 1, hi), (lo, bad)) if p[0] < p[1]]
    return written, rejects


async def _try_piece(s: Sorting, lo: int, hi: int) -> int | FileError:
    """Rows written by rows [lo, hi) in a savepoint, or the data error that undid them."""
    ordinal = s.stage is not None
    # Encoding is CPU work on a batch: in a thread, so the loop only waits.
    rows = s.batch.slice(lo, hi - lo)
    piece = await asyncio.to_thread(encode_batch, rows, s.first_row + lo, ordinal=ordinal)
    try:
        async with s.conn.atomic():  # nested: a savepoint
            if s.stage is not None:
                await truncate_stage(s.conn, s.stage)
            fmt = CopyFormat(ordinal=ordinal)
            _, written = await apply_batch(s.conn, s.target, s.stage, s.mode, piece, fmt)
            return written
    except FileError as exc:
        # COPY counts a refused row from the piece's first record; place it in the file.
        error = exc.at(s.first_row + lo) if isinstance(exc, BatchError) else exc
        if not is_bad_data(error):
            raise error from exc.__cause__
        return error


def _named_row(error: FileError, first_row: int, lo: int, hi: int) -> int | None:
    if error.row is None:
        return None
    index = error.row - first_row
    return index if lo <= index < hi else None


def _reject(batch: pa.RecordBatch, first_row: int, index: int, error: FileError) -> Reject:
    raw = raw_rows(batch.slice(index, 1))[0]
    return Reject(first_row + index, raw, str(error), error.sqlstate)
