"""Batches: the reader type and its limits, Arrow errors as FileErrors, and regrouping batches."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.read.raw_csv import RawCsv
from ingestd.settings import Contract, Settings, field_default

CSV_BLOCK_BYTES = 1 << 20  # pyarrow parses in blocks; a row must fit in one (blocks grow)
# Readers used without Settings (tests, the differential reference) get its default.
DEFAULT_MEMORY_LIMIT_BYTES: int = field_default(Settings, "memory_limit_mb") << 20

# What reading a file can raise because of the file: pyarrow's own errors (ArrowInvalid for
# bad data is also a ValueError, so it is named by its Arrow base), reading it (OSError, a
# truncated stream's EOFError) and decoding its bytes. A bare ValueError, TypeError or
# KeyError comes from ingestd's own code: a bug, which must reach the worker's boundary
# (internal_error, the file stays pending) instead of failing a good file.
FILE_READ_ERRORS: tuple[type[BaseException], ...] = (
    pa.ArrowException,
    OSError,
    EOFError,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class FileLayout:
    """What a file brings: its columns (in load order) and the PostgreSQL type of each."""

    file_type: str
    columns: tuple[str, ...]
    pg_types: tuple[str, ...]


@dataclass(frozen=True)
class RowGroups:
    """A Parquet file's row groups (each one's rows) and a reader of any range of its rows,
    so a segment of the file knows its first row number exactly."""

    rows: tuple[int, ...]
    # rows [start, end) of the file as load batches, from a reader of their own; with
    # share n, batches of 1/n of the limits (n segments share one worker's memory)
    read: Callable[[int, int, int], Iterator[pa.RecordBatch]]
    # the row groups' data uncompressed: what loading them costs, as a CSV's bytes do
    data_bytes: int = 0
    # rows [start, end) as the reader decodes them (a few thousand rows each), not
    # regrouped into load batches: binary COPY encodes them one by one into its piece
    # and keeps no Arrow batch of the whole piece
    decoded: Callable[[int, int], Iterator[pa.RecordBatch]] | None = None

    @property
    def total(self) -> int:
        """The file's rows."""
        return sum(self.rows)

    def batch(self, start: int, end: int) -> pa.RecordBatch:
        """Rows [start, end) of the file as one batch (a binary piece's rows read again,
        for its redo as CSV text)."""
        return _contiguous(pa.Table.from_batches(list(self.read(start, end, 1))))


class BatchReader:
    """Iterates a file as record batches holding exactly `layout.columns`."""

    def __init__(
        self,
        layout: FileLayout,
        batches: Iterator[pa.RecordBatch],
        header_rows: int = 0,
        file_columns: Sequence[str] = (),
        raw: RawCsv | None = None,
        row_groups: RowGroups | None = None,
    ):
        self.layout = layout
        self._batches = batches
        self._header_rows = header_rows
        self._file_columns = tuple(file_columns)
        # Set when the file's own bytes can go to COPY as they are (see raw_csv).
        self.raw = raw
        # Set for Parquet: what split needs to load ranges of row groups side by side.
        self.row_groups = row_groups

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        rows = 0
        try:
            for batch in self._batches:
                rows += batch.num_rows
                yield batch
        except FileError:
            raise
        except UnicodeDecodeError as exc:
            if not rows:
                raise arrow_file_error(exc) from None
            # Decoded ahead in blocks: the error's offset is within a block, not the file.
            byte = exc.object[exc.start : exc.start + 1]
            raise FileError(
                f"the file is not valid {exc.encoding} text after row {rows:,} "
                f"(byte {byte!r}); {_ENCODING_HINT}"
            ) from None
        except FILE_READ_ERRORS as exc:
            # Problems deep in a file (a bad row, a truncated gzip) surface only here.
            raise arrow_file_error(exc, self._header_rows, self._file_columns) from None


@dataclass(frozen=True)
class Limits:
    """How much of a file may be in memory at once.

    A batch holds at most chunk_size rows and at most a quarter of the memory limit in
    Arrow form (it exists again as CSV bytes, and the next batch is read meanwhile); a
    single CSV row may take up to half of it.
    """

    chunk_size: int
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES

    @property
    def batch_bytes(self) -> int:
        return self.memory_limit_bytes // 4

    @property
    def max_block_bytes(self) -> int:
        return max(CSV_BLOCK_BYTES, self.memory_limit_bytes // 2)


_ROW_IN_ERROR = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+)")
_BAD_UTF8 = re.compile(
    r"CSV column #(\d+): Row #(\d+): CSV conversion error to string: invalid UTF8"
)
_ENCODING_HINT = "if the file is not UTF-8, give its encoding (e.g. --encoding latin-1)"


def arrow_file_error(
    exc: BaseException, header_rows: int = 0, file_columns: Sequence[str] = ()
) -> FileError:
    """A FileError with a one-line reason, and the data row when pyarrow knows it.

    pyarrow counts records from the top of the file, header included; we count data
    rows (row 1 is the first row after the header), as COPY errors do.
    """
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, pa.ArrowException):
        return FileError(f"cannot read file: {exc.strerror}")
    if isinstance(exc, UnicodeDecodeError):
        byte = exc.object[exc.start : exc.start + 1]
        # The file is decoded in blocks: exc.start counts from a block, not the file.
        return FileError(
            f"the file is not valid {exc.encoding} text (byte {byte!r}): it may not be "
            f"a text file at all, or not in that encoding; {_ENCODING_HINT}"
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text == "Empty CSV file":
        return FileError("the file is empty (no header, no rows)")
    bad_utf8 = _BAD_UTF8.search(text)
    if bad_utf8:
        row = int(bad_utf8.group(2)) - header_rows
        index = int(bad_utf8.group(1))
        column = file_columns[index] if index < len(file_columns) else f"#{index + 1}"
        return FileError(
            f"row {row}, column {column}: bytes that are not valid UTF-8; {_ENCODING_HINT}",
            row=row,
        )
    if "Parquet" in text or "parquet" in text:
        return FileError(f"not a readable Parquet file: {text}")
    match = _ROW_IN_ERROR.search(text)
    if match:
        record, expected, got = (int(g) for g in match.groups())
        row = record - header_rows
        # The row as pyarrow quotes it, blanks kept: a line of only blanks is a row too.
        found = str(exc).lstrip().splitlines()[0][match.end() :].removeprefix(":")[1:]
        blanks = " (a line of only blanks: remove it)" if found and not found.strip() else ""
        return FileError(
            f"row {row} has {got} fields where {expected} were expected: {found[:200]!r}{blanks}",
            row=row,
        )
    return FileError(text)


# --- shared -------------------------------------------------------------------------------


def _normalise(
    batches: Iterator[pa.RecordBatch],
    columns: tuple[str, ...],
    missing: set[str],
    contract: Contract,
) -> Iterator[pa.RecordBatch]:
    """Put columns in load order, fill the ones the file lacks, make every type COPY-able."""
    fill = pa.string()
    for batch in batches:
        arrays = []
        for name in columns:
            if name in missing:
                if contract.tolerant_mode == "empty":
                    arrays.append(pa.array([""] * batch.num_rows, fill))
                else:
                    arrays.append(pa.nulls(batch.num_rows, fill))
            else:
                arrays.append(_copyable(batch.column(name)))
        yield pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _copyable(array: pa.Array) -> pa.Array:
    # Dictionaries go as their values; bytes stay bytes (encode writes them for COPY).
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def rebatch(
    batches: Iterator[pa.RecordBatch], chunk_size: int, max_bytes: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Regroup batches into batches of chunk_size rows (the last: fewer), smaller where
    chunk_size rows would take more than max_bytes: the chunk shrinks for wide rows."""
    limit = max_bytes or 1 << 62
    pending: list[pa.RecordBatch] = []
    count = size = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        size += batch.nbytes
        while count >= chunk_size or (size >= limit and count > 1):
            table = pa.Table.from_batches(pending)  # no copy: the batches side by side
            take = min(chunk_size, count)
            if size > limit:
                take = max(1, min(take, count * limit // size))
            # One copy, of the rows going out; the rest stay slices of the reader's batches.
            yield _contiguous(table.slice(0, take))
            pending = table.slice(take).to_batches()
            count -= take
            size = sum(b.nbytes for b in pending)
    if count:
        yield _contiguous(pa.Table.from_batches(pending))


def _contiguous(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def skip_rows(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Drop the first `rows` rows (already committed by an earlier run)."""
    for batch in batches:
        if rows >= batch.num_rows:
            rows -= batch.num_rows
            continue
        if rows:
            batch = batch.slice(rows)
            rows = 0
        yield batch
