"""Arrow record batch -> COPY bytes: CSV text PostgreSQL parses, or (where the target's
types take the batch's values exactly) PostgreSQL's binary COPY format, written by pgpq."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
from pgpq import ArrowToPostgresBinaryEncoder

from ingestd.read.values import converter_for

_WRITE = pacsv.WriteOptions(include_header=False, delimiter=",", quoting_style="needed")


def encode_batch(
    batch: pa.RecordBatch, first_row: int | pa.Array, *, ordinal: bool = True
) -> memoryview:
    """CSV bytes of `batch`, with each row's file row number (first_row, first_row + 1, ...,
    or first_row's own numbers when it is an array) as a last column when `ordinal` (the
    stage table needs it to keep file order).

    Strings are always quoted and NULLs written as nothing, which is exactly how
    PostgreSQL's CSV COPY tells '' (quoted) from NULL (empty, unquoted). The bytes stay
    in Arrow's buffer: COPY reads them from there, no copy is made.
    """
    batch = _text_form(batch)
    if ordinal:
        numbers = (
            first_row if isinstance(first_row, pa.Array) else _ordinals(first_row, batch.num_rows)
        )
        batch = batch.append_column("_ingestd_row", numbers)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, _WRITE)
    return memoryview(sink.getvalue())


def _ordinals(first_row: int, rows: int) -> pa.Array:
    return pa.array(range(first_row, first_row + rows), pa.int64())


def _text_form(batch: pa.RecordBatch) -> pa.RecordBatch:
    # Decimals and bytes stay typed in a batch (binary COPY sends them as they are); as
    # CSV they take the text PostgreSQL reads back as the same value (see read.values).
    arrays = []
    for field, array in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_decimal(field.type) or _is_bytes(field.type):
            array = converter_for(field.type, field.name)[0](array)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _is_bytes(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or t == pa.binary_view()
    )


# The target column types (format_type without a typmod) that binary COPY can fill from
# Arrow without changing a value: each with the Arrow type its binary form is written
# from, and the Arrow types that convert to that one exactly (integers only widen). Any
# other pair goes as CSV text, which PostgreSQL reads as it reads any file's text. A
# typmod (numeric(18,2), varchar(10)) is applied by the type's receive function just as
# by its input function: rounded or refused alike.
_I8, _I16, _I32, _I64 = pa.int8(), pa.int16(), pa.int32(), pa.int64()
_U8, _U16, _U32 = pa.uint8(), pa.uint16(), pa.uint32()
_TEXT = (pa.string(), pa.large_string())
_BINARY: dict[str, tuple[pa.DataType, tuple[pa.DataType, ...]]] = {
    "smallint": (_I16, (_I8, _I16, _U8)),
    "integer": (_I32, (_I8, _I16, _I32, _U8, _U16)),
    "bigint": (_I64, (_I8, _I16, _I32, _I64, _U8, _U16, _U32)),
    "real": (pa.float32(), (pa.float32(),)),
    "double precision": (pa.float64(), (pa.float64(),)),
    "boolean": (pa.bool_(), (pa.bool_(),)),
    "text": (pa.string(), _TEXT),
    "character varying": (pa.string(), _TEXT),
    "character": (pa.string(), _TEXT),
    "bytea": (pa.binary(), (pa.binary(), pa.large_binary(), pa.binary_view())),
    "date": (pa.date32(), (pa.date32(),)),
    "time without time zone": (pa.time64("us"), (pa.time64("us"),)),
    "timestamp without time zone": (pa.timestamp("us"), (pa.timestamp("us"),)),
    # ingestd's readers give every aware timestamp in UTC (read.values).
    "timestamp with time zone": (pa.timestamp("us", "UTC"), (pa.timestamp("us", "UTC"),)),
    "numeric": (pa.decimal128(38, 0), ()),  # any decimal128 of scale >= 0, below
}


def binary_arrays(batch: pa.RecordBatch, pg_types: Sequence[str | None]) -> list[pa.Array] | None:
    """The batch's columns as binary COPY must carry them into columns of `pg_types`, or
    None if one of them cannot go exactly (then the batch goes as CSV text)."""
    arrays = []
    for array, pg_type in zip(batch.columns, pg_types, strict=True):
        spec = _BINARY.get(pg_type or "")
        if spec is None:
            return None
        out, takes = spec
        if array.null_count == len(array):
            arrays.append(pa.nulls(len(array), out))  # a column of NULLs fits any type
        elif (carried := _carried(array, pg_type or "", out, takes)) is not None:
            arrays.append(carried)
        else:
            return None
    return arrays


def _carried(
    array: pa.Array, pg_type: str, out: pa.DataType, takes: tuple[pa.DataType, ...]
) -> pa.Array | None:
    t = array.type
    if pg_type == "numeric":
        return array if pa.types.is_decimal128(t) and t.scale >= 0 else None
    if not (t in takes or (pg_type == "bytea" and pa.types.is_fixed_size_binary(t))):
        return None
    if t == out or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return array  # pgpq writes large strings and bytes as text and bytea too
    return array.cast(out)


def encode_binary(arrays: list[pa.Array], first_row: int, *, ordinal: bool) -> memoryview:
    """One complete binary COPY stream (header, rows, trailer) of `arrays` (binary_arrays'),
    with the file row numbers as a last column when `ordinal`."""
    stream = BinaryStream(first_row, ordinal=ordinal)
    stream.write(arrays)
    return stream.finish()


class BinaryStream:
    """One binary COPY stream written a batch at a time: a piece's rows are encoded as
    they are decoded, so no Arrow batch of the whole piece is ever made or kept.

    pgpq's output goes into one buffer from Arrow's pool as it comes, each part freed at
    once: the payload never exists twice (parts and their join), and it lives in the
    allocator that gives memory back at once (jemalloc, decay 0), not in the C heap, where
    payloads of several threads stayed as fragments. `expect_bytes` (the previous piece's
    size) sizes the buffer up front, so it is rarely moved while it grows.
    """

    def __init__(self, first_row: int, *, ordinal: bool, expect_bytes: int = 0):
        self._next_row = first_row
        self._ordinal = ordinal
        self._encoder: ArrowToPostgresBinaryEncoder | None = None
        self._schema: pa.Schema | None = None
        self._buffer = pa.allocate_buffer(max(expect_bytes, 1 << 16), resizable=True)
        self._size = 0
        self.rows = 0

    def takes(self, arrays: list[pa.Array]) -> bool:
        """True if `arrays` have the types of the rows written so far (or none are)."""
        return self._schema is None or [a.type for a in arrays] == self._schema.types[: len(arrays)]

    def write(self, arrays: list[pa.Array]) -> None:
        """Append rows (binary_arrays' columns); their file rows follow the last ones."""
        rows = len(arrays[0]) if arrays else 0
        if self._ordinal:
            arrays = [*arrays, _ordinals(self._next_row, rows)]
        batch = pa.RecordBatch.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
        if self._encoder is None:
            # A fresh encoder per stream: pgpq buffers small batches until finish().
            self._schema = batch.schema
            self._encoder = ArrowToPostgresBinaryEncoder(batch.schema)
            self._append(self._encoder.write_header())
        # Slices keep pgpq's own buffer small (it grows by doubling while a batch is written).
        for start in range(0, rows, _ENCODE_ROWS):
            self._append(self._encoder.write_batch(batch.slice(start, _ENCODE_ROWS)))
        self._next_row += rows
        self.rows += rows

    def finish(self) -> memoryview:
        """The complete stream (header, rows, trailer) as one buffer."""
        if self._encoder is None:
            self.write([])
        assert self._encoder is not None  # noqa: S101 - made by the first write
        self._append(self._encoder.finish())
        self._buffer.resize(self._size, shrink_to_fit=True)
        return memoryview(self._buffer).cast("B")

    def _append(self, part: bytes) -> None:
        end = self._size + len(part)
        if end > self._buffer.size:
            self._buffer.resize(max(end, self._buffer.size * 5 // 4))
        with memoryview(self._buffer).cast("B") as view:  # released before any resize
            view[self._size : end] = part
        self._size = end


_ENCODE_ROWS = 8192


def raw_rows(batch: pa.RecordBatch) -> list[str]:
    """Each row of `batch` as one CSV line (for ingestion_rejects.raw)."""
    batch = _text_form(batch)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, _WRITE)
    text: str = sink.getvalue().to_pybytes().decode("utf-8", errors="replace")
    if batch.num_rows == 1:
        return [text.rstrip("\n")]
    # Quoted fields may hold newlines, so split by re-encoding row by row.
    return [raw_rows(batch.slice(i, 1))[0] for i in range(batch.num_rows)]


def record_at_line(payload: bytes | memoryview, line: int, quote: str = '"') -> int:
    """The record (1-based) that line `line` of a COPY error is part of, in CSV `payload`.

    COPY numbers the lines of its input, and a quoted field may span several; but it does
    not count the line breaks inside the first record it reads (PostgreSQL 15 to 18 alike,
    tests/integration/test_rejects.py), so those are added back first.
    """
    data = bytes(payload)  # only on the error path
    mark = quote.encode()
    at = quotes = records = 0
    physical = line
    while (newline := data.find(b"\n", at)) >= 0:
        quotes += data.count(mark, at, newline)
        at = newline + 1
        if quotes % 2 == 0:
            break
        physical += 1  # a line break inside the first record
    at = quotes = 0
    for _ in range(physical - 1):
        newline = data.find(b"\n", at)
        if newline < 0:
            break
        quotes += data.count(mark, at, newline)
        records += quotes % 2 == 0
        at = newline + 1
    return records + 1
