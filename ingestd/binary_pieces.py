"""Parquet rows to binary COPY pieces, encoded as they are decoded.

A piece of chunk_size rows is written to its binary COPY stream a few thousand rows at a
time, straight from the Parquet reader: no Arrow batch of the whole piece is made (the
regrouping copy) nor kept while it is in the database. Only if the server refuses it does
the piece need its rows as Arrow (the redo as CSV text): they are read again from the file.
Rows whose types binary COPY cannot carry exactly go as CSV text pieces, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import pyarrow as pa

from ingestd.db.stage import CopyFormat
from ingestd.encode import BinaryStream, binary_arrays, encode_batch
from ingestd.exceptions import FileError
from ingestd.load import Piece, Span
from ingestd.read.batches import RowGroups
from ingestd.read.text import refuse_nul


def binary_pieces(
    groups: RowGroups,
    start: int,
    end: int,
    types: tuple[str | None, ...],
    *,
    ordinal: bool,
    chunk_rows: int,
    max_bytes: int,
    segment: int | None = None,
) -> Callable[[], Piece | None]:
    """A producer (for load.read_ahead) of the pieces of rows [start, end) of the file,
    each at most chunk_rows rows and about max_bytes of Arrow data; with `segment`, each
    piece carries its Span of that segment."""
    assert groups.decoded is not None  # noqa: S101 - every Parquet reader has it
    return _Pieces(
        groups, groups.decoded(start, end), start, types, ordinal, chunk_rows, max_bytes, segment
    ).next_piece


class _Pieces:
    """What carries over from one piece to the next: rows read past it, where it ends."""

    def __init__(
        self,
        groups: RowGroups,
        decoded: Iterator[pa.RecordBatch],
        start: int,
        types: tuple[str | None, ...],
        ordinal: bool,
        chunk_rows: int,
        max_bytes: int,
        segment: int | None,
    ):
        self._groups, self._decoded, self._types = groups, decoded, types
        self._ordinal, self._chunk_rows, self._max_bytes = ordinal, chunk_rows, max_bytes
        self._segment = segment
        self._back: list[pa.RecordBatch] = []  # rows read but not in a piece yet, next on top
        self._position = start  # the file's rows (0-based) before the next piece
        self._last_bytes = 0  # the last binary piece's payload

    def next_piece(self) -> Piece | None:
        batch = self._next_batch()
        if batch is None:
            return None
        batch = self._cut(batch, self._chunk_rows, self._max_bytes)
        arrays = binary_arrays(batch, self._types)
        if arrays is None:
            self._back.append(batch)
            return self._text_piece()
        # Sized as the last piece (pieces are alike): its buffer is rarely moved as it grows.
        expect = self._last_bytes + self._last_bytes // 16
        stream = BinaryStream(self._position + 1, ordinal=self._ordinal, expect_bytes=expect)
        size = 0
        while arrays is not None and stream.takes(arrays):
            refuse_nul(batch, self._position + stream.rows + 1)
            stream.write(arrays)
            size += batch.nbytes
            if stream.rows >= self._chunk_rows or size >= self._max_bytes:
                break
            if (batch := self._next_batch()) is None:
                break
            batch = self._cut(batch, self._chunk_rows - stream.rows, self._max_bytes - size)
            arrays = binary_arrays(batch, self._types)
        else:
            self._back.append(batch)  # rows binary COPY cannot carry as these: the next piece's
        rows, at = stream.rows, self._position
        fmt = CopyFormat(ordinal=self._ordinal, binary_types=self._types)
        payload = stream.finish()
        again = partial(_rows_again, self._groups, self._types, self._ordinal, at, rows, payload)
        self._last_bytes = len(payload)
        piece = Piece(payload, fmt, span=self._span(rows), rows_again=again)
        self._position += rows
        return piece

    def _text_piece(self) -> Piece:
        """CSV text of the next rows, as one batch (rows binary COPY cannot carry)."""
        taken: list[pa.RecordBatch] = []
        rows = size = 0
        while rows < self._chunk_rows and size < self._max_bytes:
            if (batch := self._next_batch()) is None:
                break
            batch = self._cut(batch, self._chunk_rows - rows, self._max_bytes - size)
            taken.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
        batch = pa.Table.from_batches(taken).combine_chunks().to_batches()[0]
        refuse_nul(batch, self._position + 1)
        payload = encode_batch(batch, self._position + 1, ordinal=self._ordinal)
        fmt = CopyFormat(ordinal=self._ordinal)
        piece = Piece(payload, fmt, batch, span=self._span(batch.num_rows))
        self._position += batch.num_rows
        return piece

    def _next_batch(self) -> pa.RecordBatch | None:
        if self._back:
            return self._back.pop()
        while (batch := next(self._decoded, None)) is not None:
            if batch.num_rows:
                return batch
        return None

    def _cut(self, batch: pa.RecordBatch, room: int, room_bytes: int) -> pa.RecordBatch:
        """The batch's first `room` rows, fewer for wide rows (about room_bytes of them, at
        least one); the rest go back for the next piece."""
        if batch.nbytes > room_bytes:
            room = min(room, max(1, batch.num_rows * room_bytes // batch.nbytes))
        if batch.num_rows > room:
            self._back.append(batch.slice(room))
            return batch.slice(0, room)
        return batch

    def _span(self, rows: int) -> Span | None:
        if self._segment is None:
            return None
        return Span(self._segment, self._position, self._position + rows)


def _rows_again(
    groups: RowGroups,
    types: tuple[str | None, ...],
    ordinal: bool,
    at: int,
    rows: int,
    payload: memoryview,
) -> pa.RecordBatch | None:
    """A binary piece's rows read again from the file for its redo as text, or None when
    they are not the rows it was made of. The file is opened again by its path, and a file
    replaced by one of the same size with its mtime set back passes the identity check, so
    the rows must encode to the very bytes the piece sent."""
    try:
        batch = groups.batch(at, at + rows)
    except (FileError, OSError, ValueError, pa.ArrowException):
        return None  # a replacement unlike the file: no such rows, other columns or types
    arrays = binary_arrays(batch, types) if batch.num_rows == rows else None
    if arrays is None:
        return None
    stream = BinaryStream(at + 1, ordinal=ordinal, expect_bytes=len(payload))
    stream.write(arrays)
    return batch if bytes(stream.finish()) == bytes(payload) else None
