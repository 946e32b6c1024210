"""Parquet: read a Parquet file as record batches, and map its Arrow types to PostgreSQL types."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingestd.exceptions import FileError
from ingestd.read.batches import BatchReader, FileLayout, Limits, _normalise, rebatch
from ingestd.read.columns import check_header, select_columns
from ingestd.settings import Contract

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


def open_parquet(path: Path, contract: Contract, limits: Limits) -> BatchReader:
    pf = pq.ParquetFile(str(path))
    schema = pf.schema_arrow
    names = list(schema.names)
    check_header(names, path)
    columns, missing = select_columns(names, contract)
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
