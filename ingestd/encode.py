"""Arrow record batch -> CSV bytes for COPY, so PostgreSQL does the per-row parsing."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv

_WRITE = pacsv.WriteOptions(include_header=False, delimiter=",", quoting_style="needed")


def encode_batch(batch: pa.RecordBatch, first_row: int, *, ordinal: bool = True) -> memoryview:
    """CSV bytes of `batch`, with each row's file row number (first_row, first_row + 1, ...)
    as a last column when `ordinal` (the stage table needs it to keep file order).

    Strings are always quoted and NULLs written as nothing, which is exactly how
    PostgreSQL's CSV COPY tells '' (quoted) from NULL (empty, unquoted). The bytes stay
    in Arrow's buffer: COPY reads them from there, no copy is made.
    """
    if ordinal:
        rows = pa.array(range(first_row, first_row + batch.num_rows), pa.int64())
        batch = batch.append_column("_ingestd_row", rows)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, _WRITE)
    return memoryview(sink.getvalue())


def raw_rows(batch: pa.RecordBatch) -> list[str]:
    """Each row of `batch` as one CSV line (for ingestion_rejects.raw)."""
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
