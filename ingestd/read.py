"""Readers: CSV and Parquet files as a stream of Arrow record batches of at most chunk-size rows."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingestd.exceptions import FileError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier
from ingestd.settings import Contract

CSV_BLOCK_BYTES = 1 << 20  # pyarrow parses in blocks; a row must fit in one (blocks grow)
DEFAULT_MEMORY_LIMIT_BYTES = 256 << 20
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


@dataclass(frozen=True)
class FileLayout:
    """What a file brings: its columns (in load order) and the PostgreSQL type of each."""

    file_type: str
    columns: tuple[str, ...]
    pg_types: tuple[str, ...]


class BatchReader:
    """Iterates a file as record batches holding exactly `layout.columns`."""

    def __init__(
        self,
        layout: FileLayout,
        batches: Iterator[pa.RecordBatch],
        header_rows: int = 0,
        file_columns: Sequence[str] = (),
    ):
        self.layout = layout
        self._batches = batches
        self._header_rows = header_rows
        self._file_columns = tuple(file_columns)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._batches
        except FileError:
            raise
        except (pa.ArrowException, OSError, UnicodeError, ValueError, EOFError) as exc:
            # Problems deep in a file (a bad row, a truncated gzip) surface only here.
            raise arrow_file_error(exc, self._header_rows, self._file_columns) from None


def release_memory_promptly() -> None:
    """Have Arrow's allocator give freed memory back to the OS at once.

    By default jemalloc keeps freed pages for a while, so a steady stream of batches
    shows as twice the memory it needs; with decay 0 peak RSS follows what is in use.
    """
    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(0)


def guess_file_type(name: str) -> str:
    """csv, parquet or unknown, from a file name alone (for metrics labels and routing)."""
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "csv" if lower.endswith(CSV_SUFFIXES) else "unknown"


def detect_type(path: Path, contract: Contract) -> str:
    """csv or parquet, from the contract or the file name (and the Parquet magic bytes)."""
    file_type: str = contract.file_type
    if file_type == "auto":
        file_type = guess_file_type(path.name)
        if file_type == "unknown":
            raise FileError(
                f"cannot tell whether {path.name} is CSV or Parquet from its name: "
                "use a .csv/.csv.gz/.parquet suffix or set file_type in the contract"
            )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if file_type == "parquet" and magic != b"PAR1":
        raise FileError(f"{path.name} is not a Parquet file (no PAR1 magic bytes)")
    if file_type == "csv" and magic == b"PAR1":
        raise FileError(
            f"{path.name} is a Parquet file with a CSV name: rename it to .parquet "
            "or set file_type = parquet in its contract"
        )
    if file_type == "csv" and magic[:2] == b"\x1f\x8b" and not path.name.lower().endswith(".gz"):
        raise FileError(f"{path.name} is gzip-compressed: name it {path.name}.gz")
    return file_type


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


def open_reader(
    path: Path,
    contract: Contract,
    chunk_size: int,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> BatchReader:
    """Open `path` under `contract`; raises FileError when the file cannot be loaded."""
    file_type = detect_type(path, contract)
    limits = Limits(chunk_size, memory_limit_bytes)
    try:
        if file_type == "parquet":
            return _open_parquet(path, contract, limits)
        return _open_csv(path, contract, limits)
    except (pa.ArrowException, OSError, UnicodeError, ValueError) as exc:
        header_rows = 1 if file_type == "csv" and contract.csv.header else 0
        raise arrow_file_error(exc, header_rows) from None


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
        return FileError(
            f"the file is not valid {exc.encoding} text (byte {byte!r} at offset {exc.start}): "
            f"it may not be a CSV file; {_ENCODING_HINT}"
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
        return FileError(
            f"row {row} has {got} fields where {expected} were expected: "
            f"{text[match.end() :].lstrip(': ')[:200]!r}",
            row=row,
        )
    return FileError(text)


# --- CSV ----------------------------------------------------------------------------------


def _csv_stream(path: Path) -> pa.NativeFile:
    compression = "gzip" if path.name.lower().endswith(".gz") else None
    return pa.input_stream(str(path), compression=compression)


def _csv_options(
    contract: Contract, block_bytes: int
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    opts = contract.csv
    read = pacsv.ReadOptions(
        # One thread: row numbers in errors are only known single-threaded, and the
        # other core belongs to PostgreSQL.
        use_threads=False,
        block_size=block_bytes,
        encoding=opts.encoding,
        column_names=list(contract.headers) if not opts.header and contract.headers else None,
    )
    parse = pacsv.ParseOptions(
        delimiter=opts.delimiter,
        quote_char=opts.quote,
        newlines_in_values=True,
    )
    return read, parse


def _is_straddle(exc: BaseException) -> bool:
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)


def _too_large(limits: Limits, rows_before: int) -> FileError:
    return FileError(
        f"after row {rows_before}, a row is larger than {limits.max_block_bytes >> 20} MiB, "
        "or a quoted field is never closed (malformed quoting). If rows really are that "
        "large, raise memory_limit_mb (a row may use half of it)"
    )


def _read_header(path: Path, contract: Contract, limits: Limits) -> list[str]:
    block = CSV_BLOCK_BYTES
    while True:
        read, parse = _csv_options(contract, block)
        try:
            with _csv_stream(path) as stream:
                reader = pacsv.open_csv(stream, read_options=read, parse_options=parse)
                return list(reader.schema.names)
        except pa.ArrowInvalid as exc:
            if not _is_straddle(exc):
                raise
            if block * 2 > limits.max_block_bytes:
                raise _too_large(limits, 0) from None
            block *= 2


def _open_csv(path: Path, contract: Contract, limits: Limits) -> BatchReader:
    if contract.csv.header:
        names = _read_header(path, contract, limits)
        _check_header(names, path)
    else:
        names = list(contract.headers or ())
    columns, missing = _select_columns(names, contract)
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        include_columns=[c for c in columns if c not in missing],
        # PostgreSQL's CSV rules: an unquoted empty field is NULL, a quoted one ("") is ''.
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )

    def open_with(block: int) -> pacsv.CSVStreamingReader:
        read, parse = _csv_options(contract, block)
        return pacsv.open_csv(
            _csv_stream(path), read_options=read, parse_options=parse, convert_options=convert
        )

    types = dict(contract.types)
    layout = FileLayout("csv", columns, tuple(types.get(c, "text") for c in columns))
    batches = _normalise(_iter_csv(open_with, limits), columns, missing, contract)
    header_rows = 1 if contract.csv.header else 0
    batches = rebatch(batches, limits.chunk_size, limits.batch_bytes)
    return BatchReader(layout, batches, header_rows, names)


def _iter_csv(
    open_with: Callable[[int], pacsv.CSVStreamingReader], limits: Limits
) -> Iterator[pa.RecordBatch]:
    """Stream record batches; when a row does not fit pyarrow's block, reopen with a larger
    block (up to the limit) and continue after the rows already yielded."""
    block = CSV_BLOCK_BYTES
    done = 0
    while True:
        reader: pacsv.CSVStreamingReader | None = None
        try:
            reader = open_with(block)
            for batch in skip_rows(iter(reader), done):
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid as exc:
            if not _is_straddle(exc):
                raise
            if block * 2 > limits.max_block_bytes:
                raise _too_large(limits, done) from None
            block *= 2
        finally:
            if reader is not None:
                reader.close()


def _check_header(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        try:
            validate_identifier(name, what="header column")
        except InvalidIdentifierError as exc:
            raise FileError(
                f"{path.name}: {exc}. Rename the column in the file, or load it with "
                "--no-header --headers a,b,c to name the columns yourself",
                row=1,
            ) from None
        if name in seen:
            raise FileError(f"{path.name}: header names column {name!r} twice", row=1)
        seen.add(name)


def _select_columns(names: list[str], contract: Contract) -> tuple[tuple[str, ...], set[str]]:
    """The columns to load (contract order, or the file's) and those the file lacks."""
    if contract.headers is None:
        columns = tuple(names)
    else:
        columns = contract.headers
    missing = {c for c in columns if c not in names}
    if missing and (not contract.tolerant or missing & set(contract.pk)):
        raise FileError(
            f"file lacks column(s) {', '.join(sorted(missing))} that the contract expects "
            f"(file has: {', '.join(names[:30])}); fix the file or the contract's headers"
            + ("" if contract.tolerant else ", or use --tolerant to fill them with NULL")
        )
    absent_pk = [c for c in contract.pk if c not in columns]
    if absent_pk:
        raise FileError(f"file has no primary key column {', '.join(absent_pk)}")
    return columns, missing


# --- Parquet ------------------------------------------------------------------------------

_ARROW_TO_PG = {
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.uint8(): "smallint",
    pa.uint16(): "integer",
    pa.uint32(): "bigint",
    pa.uint64(): "numeric(20,0)",
    pa.float16(): "real",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.bool_(): "boolean",
    pa.date32(): "date",
    pa.date64(): "date",
    pa.string(): "text",
    pa.large_string(): "text",
    pa.binary(): "bytea",
    pa.large_binary(): "bytea",
}


def pg_type_for(arrow_type: pa.DataType, column: str) -> str:
    """The PostgreSQL type a Parquet column keeps under --preserve-types."""
    if pa.types.is_dictionary(arrow_type):
        return pg_type_for(arrow_type.value_type, column)
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if pa.types.is_time(arrow_type):
        return "time"
    if arrow_type in _ARROW_TO_PG:
        return _ARROW_TO_PG[arrow_type]
    raise FileError(
        f"column {column} has type {arrow_type}, which ingestd cannot load into a column: "
        "flatten nested data before loading"
    )


def _open_parquet(path: Path, contract: Contract, limits: Limits) -> BatchReader:
    pf = pq.ParquetFile(str(path))
    schema = pf.schema_arrow
    names = list(schema.names)
    _check_header(names, path)
    columns, missing = _select_columns(names, contract)
    for column in columns:
        if column not in missing:
            pg_type_for(schema.field(column).type, column)  # refuse nested types up front
    types = dict(contract.types)
    if contract.preserve_types:
        pg_types = tuple(
            types.get(c) or ("text" if c in missing else pg_type_for(schema.field(c).type, c))
            for c in columns
        )
    else:
        pg_types = tuple(types.get(c, "text") for c in columns)
    present = [c for c in columns if c not in missing]
    raw = pf.iter_batches(batch_size=limits.chunk_size, columns=present, use_threads=False)
    layout = FileLayout("parquet", columns, pg_types)
    batches = _normalise(raw, columns, missing, contract)
    return BatchReader(layout, rebatch(batches, limits.chunk_size, limits.batch_bytes))


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
    # Binary goes as PostgreSQL's hex bytea text; dictionaries as their values.
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return pa.array(
            [None if v is None else "\\x" + v.hex() for v in array.to_pylist()], pa.string()
        )
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
