"""Parquet: read a Parquet file as record batches, map its Arrow types to PostgreSQL types,
and give PostgreSQL each value in a form it reads back as the same value (or refuse it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ingestd.exceptions import FileError
from ingestd.read.batches import (
    BatchReader,
    FileLayout,
    Limits,
    RowGroups,
    _normalise,
    rebatch,
)
from ingestd.read.columns import load_names, select_columns
from ingestd.read.values import BadValueError, Converter, converter_for, pg_type_of, range_only
from ingestd.settings import Contract
from ingestd.storage import Openable, open_ranged

__all__ = ["open_parquet", "pg_type_for"]

# Contract types under which a binary column's bytes are a text value, not bytea.
_BYTES_TYPES = {"bytea"}


def pg_type_for(arrow_type: pa.DataType, column: str) -> str:
    """The PostgreSQL type a Parquet column keeps under --preserve-types (FileError if none)."""
    return pg_type_of(arrow_type, column)


@dataclass(frozen=True)
class _Column:
    name: str
    arrow_type: pa.DataType
    pg_type: str  # under --preserve-types
    convert: Converter
    checked: bool  # whose values can be refused, so they are read once before loading
    source: str  # its name in the file (another one under --no-header --headers)
    label: str = ""  # the type named in messages, when not the Arrow type


def open_parquet(path: Openable, contract: Contract, limits: Limits) -> BatchReader:
    """Open a Parquet file; every type and value is checked before the first batch goes out."""
    # INT96 (Spark, Hive, Impala) is read as microseconds: nanoseconds overflow past 2262,
    # and PostgreSQL keeps microseconds. Checksums, where the writer wrote them, are verified.
    pf = _open(path, "us")
    schema = pf.schema_arrow
    # Named by the user (--no-header), the file's own names need only be distinct.
    loaded = contract.headers if contract.csv.header else ()
    named = load_names(list(schema.names), path, contract, "parquet", loaded)
    source = _source_names(list(schema.names), contract)
    if contract.csv.header and named != list(schema.names):  # column_names = normalize
        source = dict(zip(named, schema.names, strict=True))
    names = list(source)
    columns, missing = select_columns(names, contract)
    types = dict(contract.types)
    # Under ignore and rescue a nested column the table lacks is dropped or rescued, not
    # refused: it is read as JSON text (a column the table has then gets that text).
    nested = contract.schema_evolution in ("ignore", "rescue")
    plan = {
        c: _plan(pf, schema.field(source[c]).type, c, source[c], types.get(c), nested)
        for c in columns
        if c not in missing
    }
    if contract.preserve_types:
        pg_types = tuple(
            types.get(c) or ("text" if c in missing else plan[c].pg_type) for c in columns
        )
    else:
        pg_types = tuple(types.get(c, "text") for c in columns)
    present = [c for c in columns if c not in missing]
    _check_int96(path, pf, [plan[c] for c in present], limits.chunk_size)
    checked = [c for c in present if plan[c].checked and not _cleared(pf, plan[c])]
    if checked:
        # Refuse a file before any of it is loaded, not after its first batches committed.
        for _ in _converted(pf, checked, plan, limits.chunk_size):
            pass
    layout = FileLayout("parquet", columns, pg_types)

    def batches(
        source: pq.ParquetFile, start: int, end: int | None, share: int = 1
    ) -> Iterator[pa.RecordBatch]:
        chunk = max(1, limits.chunk_size // share)
        raw = _converted(source, present, plan, chunk, start, end)
        normal = _normalise(raw, columns, missing, contract)
        return rebatch(normal, chunk, limits.batch_bytes // share)

    def read_rows(start: int, end: int, share: int = 1) -> Iterator[pa.RecordBatch]:
        def opened() -> Iterator[pa.RecordBatch]:
            # A file of its own: segments are read side by side, each in its own thread.
            yield from batches(_open(path, "us"), start, end, share)

        return iter(BatchReader(layout, opened()))

    def decoded(start: int, end: int) -> Iterator[pa.RecordBatch]:
        def opened() -> Iterator[pa.RecordBatch]:
            raw = _converted(_open(path, "us"), present, plan, limits.chunk_size, start, end)
            yield from _normalise(raw, columns, missing, contract)

        return iter(BatchReader(layout, opened()))

    meta = pf.metadata
    each = [meta.row_group(g) for g in range(meta.num_row_groups)]
    groups = RowGroups(
        tuple(g.num_rows for g in each),
        read_rows,
        sum(g.total_byte_size for g in each),
        decoded,
    )
    return BatchReader(layout, batches(pf, 0, None), row_groups=groups)


def _open(path: Openable, int96_unit: str) -> pq.ParquetFile:
    return pq.ParquetFile(
        open_ranged(path),  # from its storage: ranged reads for the footer and row groups
        coerce_int96_timestamp_unit=int96_unit,
        page_checksum_verification=True,
    )


def _check_int96(
    path: Openable, pf: pq.ParquetFile, columns: list[_Column], chunk_size: int
) -> None:
    """Refuse INT96 values outside years 1 to 9999, judged from a reading in seconds.

    pyarrow's microsecond reading of INT96 wraps around silently past +-292,000 years
    (Spark's file in parquet-testing has one), and a wrapped value can land anywhere; in
    seconds nothing an INT96 holds overflows.
    """
    int96 = [c for c in columns if _physical_type(pf, c.source) == "INT96"]
    if not int96:
        return
    seconds = _open(path, "s")
    plan = {}
    for c in int96:
        arrow_type = pa.timestamp("s", tz=getattr(c.arrow_type, "tz", None))
        convert, _ = converter_for(arrow_type, c.name)
        plan[c.name] = _Column(c.name, arrow_type, c.pg_type, convert, True, c.source, "INT96")
    for _ in _converted(seconds, list(plan), plan, chunk_size):
        pass


def _source_names(names: list[str], contract: Contract) -> dict[str, str]:
    """Each column's load name -> its name in the file.

    With --no-header --headers a,b,c the user names the file's columns in file order, as
    for a CSV file without a header row: the way to load names that are not identifiers.
    """
    if contract.csv.header or not contract.headers:
        return {n: n for n in names}
    if len(contract.headers) != len(names):
        raise FileError(
            f"--headers names {len(contract.headers)} columns and the file has {len(names)} "
            f"({', '.join(names[:30])}): without a header, name every column in file order"
        )
    return dict(zip(contract.headers, names, strict=True))


def _plan(
    pf: pq.ParquetFile,
    arrow_type: pa.DataType,
    column: str,
    source: str,
    declared: str | None,
    nested_as_json: bool = False,
) -> _Column:
    if nested_as_json and pa.types.is_nested(arrow_type):
        return _Column(column, arrow_type, "jsonb", _as_json, False, source)
    pg_type = pg_type_of(arrow_type, column)  # refuses nested and unknown types up front
    # Bytes the file does not mark as UTF-8 (Impala and Hive write strings so) stay bytes,
    # unless the contract gives the column a type that is not bytea: then they are text.
    as_text = declared is not None and declared.split("(")[0].strip() not in _BYTES_TYPES
    as_text = as_text or _logical_type(pf, source) == "ENUM"  # ENUM is UTF-8 by definition
    convert, checked = converter_for(arrow_type, column, decode_binary=as_text)
    if _typed(arrow_type) and not as_text:
        # Decimals and bytes stay typed: binary COPY carries them as they are, and
        # encode writes their text only when the batch goes as CSV.
        convert = _same
    return _Column(column, arrow_type, pg_type, convert, checked, source)


def _as_json(array: pa.Array) -> pa.Array:
    """A nested column's values as JSON text (NULL stays NULL); what JSON lacks (dates,
    decimals, bytes) as its text."""
    values = array.to_pylist()
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
        pa.string(),
    )


def _typed(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_decimal(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or t == pa.binary_view()
    )


def _same(array: pa.Array) -> pa.Array:
    return array


def _leaf(pf: pq.ParquetFile, column: str) -> int | None:
    schema = pf.schema
    for i in range(len(schema)):
        if schema.column(i).path == column:
            return i
    return None


def _physical_type(pf: pq.ParquetFile, column: str) -> str:
    index = _leaf(pf, column)
    return "" if index is None else str(pf.schema.column(index).physical_type)


def _logical_type(pf: pq.ParquetFile, column: str) -> str:
    index = _leaf(pf, column)
    return "NONE" if index is None else str(pf.schema.column(index).logical_type.type)


_STORED_UNIT = {"ms": "milliseconds", "us": "microseconds"}


def _cleared(pf: pq.ParquetFile, column: _Column) -> bool:
    """True if every row group's statistics show the column's values are all in range."""
    span = range_only(column.arrow_type)
    index = _leaf(pf, column.source)
    if span is None or index is None:
        return False
    unit = _STORED_UNIT.get(getattr(column.arrow_type, "unit", ""), "Date")
    for group in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max or unit not in str(stats.logical_type):
            return False  # INT96, or statistics in another unit than the Arrow type's
        if not (span[0] <= stats.min_raw and stats.max_raw <= span[1]):
            return False
    return True


def _converted(
    pf: pq.ParquetFile,
    columns: list[str],
    plan: dict[str, _Column],
    chunk_size: int,
    start: int = 0,
    end: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """The file's batches (rows [start, end) of it), row group by row group, each value
    made COPY-ready; a row is named by its number in the file."""
    row = 0  # the file's rows before `batch`
    stop = pf.metadata.num_rows if end is None else end
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if row + rows <= start or row >= stop:  # a group outside the range is not read
            row += rows
            continue
        for batch in _read(pf, group, [plan[c] for c in columns], chunk_size):
            skip, size = max(start - row, 0), batch.num_rows
            take = min(stop - row, size) - skip
            row += size
            if take <= 0:
                continue
            if take < size:
                batch = batch.slice(skip, take)
            first = row - size + skip
            arrays = []
            for name in columns:
                try:
                    arrays.append(plan[name].convert(batch.column(plan[name].source)))
                except BadValueError as exc:
                    at = first + exc.index + 1
                    label = plan[name].label or plan[name].arrow_type
                    raise FileError(f"row {at}, column {name} ({label}): {exc}", row=at) from None
            yield pa.RecordBatch.from_arrays(arrays, names=columns)
            if row >= stop:
                return


# Rows pyarrow decodes at a time (rebatch joins them into chunk_size batches): its reader
# holds several times a batch while decoding, so small reads keep the peak low (measured:
# 50,000-row reads peak ~90 MB above the imports, 10,000-row reads ~55 MB, same CPU).
_READ_ROWS = 10_000


def _read(
    pf: pq.ParquetFile, group: int, columns: list[_Column], chunk_size: int
) -> Iterator[pa.RecordBatch]:
    # Only errors of reading the file are the file's: a failed conversion is ingestd's.
    sources = [c.source for c in columns]
    batches = pf.iter_batches(
        batch_size=min(chunk_size, _READ_ROWS),
        row_groups=[group],
        columns=sources,
        use_threads=False,
    )
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(pf, group, columns, exc) from None
        yield batch


def _damaged(pf: pq.ParquetFile, group: int, columns: list[_Column], exc: Exception) -> FileError:
    """Name the column a read failed in: each is read alone from the failing row group."""
    culprit = None
    for column in columns:
        try:
            pf.read_row_group(group, columns=[column.source], use_threads=False)
        except (pa.ArrowException, OSError):
            culprit = column.name
            break
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"row group {group}" + (f", column {culprit}" if culprit else "")
    if "checksum" in text.lower():
        return FileError(
            f"the Parquet file is damaged: a page checksum does not match ({where}); "
            "write the file again from its source"
        )
    if "decrypt" in text.lower() or "encrypt" in text.lower():
        return FileError(
            f"the Parquet file has encrypted columns ({where}), and ingestd cannot decrypt "
            "Parquet: decrypt it before loading"
        )
    return FileError(f"not a readable Parquet file ({where}): {text}")
