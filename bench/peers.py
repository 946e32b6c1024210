"""The peers ingestd is measured against, each run as its own process so its CPU and
memory are measured like ingestd's:

python -m bench.peers METHOD FILE DSN TABLE

- raw-copy: the CSV's bytes -> asyncpg `copy_to_table` (CSV COPY), one connection
- raw-upsert: the same into a temp table, then `INSERT ... ON CONFLICT DO UPDATE`,
  one transaction
- adbc-csv: pyarrow's streaming CSV reader (typed) -> ADBC `adbc_ingest` (binary COPY)
- adbc-parquet: Parquet record batches -> ADBC `adbc_ingest`
- duckdb-parquet: DuckDB's postgres extension, `INSERT INTO pg.t SELECT * FROM read_parquet()`
- duckdb-csv: the same from `read_csv(...)`
- pgpq-parquet: Parquet batches -> pgpq (Arrow -> binary COPY encoder) -> asyncpg binary COPY
- pgpq-parquet-2conn: the same, one COPY per batch of 100,000 rows, over two connections
- pgpq-csv-text: the CSV read by pyarrow as text columns -> pgpq -> binary COPY into a text
  stage, then `INSERT ... SELECT` with casts (PostgreSQL casts every value), per batch
- pgpq-csv-text-2conn: the same over two connections

adbc-*, duckdb-* and pgpq-* need the optional `bench` extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import queue
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.data import COLUMNS, DELIMITER, PK, SCHEMA

COPY_BINARY_TRAILER = b"\xff\xff"  # the field count -1 that ends a COPY BINARY stream
# Rows per Parquet batch (CSV: about as many, by block size) and per text-stage
# transaction; BENCH_BATCH_ROWS overrides it to see what the batch size costs in memory.
BATCH_ROWS = int(os.environ.get("BENCH_BATCH_ROWS", "100000"))
CSV_BLOCK_BYTES = max(1 << 20, BATCH_ROWS * 128)  # the registry CSV: ~127 bytes a row

# The DuckDB extension wheel and the DuckDB release must match (pinned together in the extra).
MODULES = {
    "adbc": ("adbc_driver_manager", "adbc_driver_postgresql"),
    "duckdb": ("duckdb", "duckdb_extension_postgres"),
    "pgpq": ("pgpq",),
}


def _csv_copy_options() -> dict[str, Any]:
    return {"format": "csv", "delimiter": DELIMITER, "encoding": "LATIN1"}


# --- asyncpg, raw bytes ----------------------------------------------------------------


async def raw_copy(path: str, dsn: str, table: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_to_table(table, source=path, columns=list(COLUMNS), **_csv_copy_options())
    finally:
        await conn.close()


async def raw_upsert(path: str, dsn: str, table: str) -> None:
    cols = ", ".join(COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != PK)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE TEMP TABLE stage (LIKE {table}) ON COMMIT DROP")
            await conn.copy_to_table("stage", source=path, columns=list(COLUMNS),
                                     **_csv_copy_options())  # fmt: skip
            await conn.execute(
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage "
                f"ON CONFLICT ({PK}) DO UPDATE SET {sets}"
            )
    finally:
        await conn.close()


# --- Arrow readers ---------------------------------------------------------------------


def _typed_schema() -> pa.Schema:
    return pa.schema([(name, arrow) for name, _, arrow in SCHEMA])


def csv_reader(path: str, *, as_text: bool = False) -> pa.RecordBatchReader:
    """pyarrow's streaming CSV reader in the registry's dialect: typed as the table, or
    (as_text) every column as string, values left for PostgreSQL to cast."""
    read = pacsv.ReadOptions(column_names=list(COLUMNS), encoding="latin-1",
                             block_size=CSV_BLOCK_BYTES)  # fmt: skip
    parse = pacsv.ParseOptions(delimiter=DELIMITER)
    if as_text:
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS})
        return pacsv.open_csv(path, read_options=read, parse_options=parse,
                              convert_options=convert)  # fmt: skip
    # Dates are written YYYYMMDD: Arrow parses them as timestamps, then casts to date32.
    types = {name: (pa.timestamp("s") if arrow == pa.date32() else arrow)
             for name, _, arrow in SCHEMA}  # fmt: skip
    convert = pacsv.ConvertOptions(column_types=types, timestamp_parsers=["%Y%m%d"])
    raw = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    schema = _typed_schema()

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in raw:
            arrays = [
                pc.cast(col, field.type) if col.type != field.type else col
                for col, field in zip(batch.columns, schema, strict=True)
            ]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def parquet_reader(path: str) -> pa.RecordBatchReader:
    pf = pq.ParquetFile(path)
    return pa.RecordBatchReader.from_batches(pf.schema_arrow, pf.iter_batches(BATCH_ROWS))


# --- ADBC ------------------------------------------------------------------------------


def adbc_ingest(reader: pa.RecordBatchReader, dsn: str, table: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest(table, reader, mode="append")
        conn.commit()


# --- DuckDB ----------------------------------------------------------------------------


def duckdb_connect(dsn: str) -> Any:
    """DuckDB with the postgres extension loaded from its PyPI wheel: never from the
    network (autoinstall off, an empty extension directory)."""
    import duckdb
    import duckdb_extension_postgres

    empty = tempfile.mkdtemp(prefix="duckdb-ext-")
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False,
                                 "extension_directory": empty})  # fmt: skip
    packaged = next(
        pathlib.Path(duckdb_extension_postgres.__file__).parent.glob(
            f"extensions/v{duckdb.__version__}/postgres.duckdb_extension"
        ),
        None,
    )
    if packaged is None:
        raise SystemExit(f"duckdb-extension-postgres has no build for DuckDB {duckdb.__version__}")
    # DuckDB names an extension after its file and expects that name's entry point.
    link = pathlib.Path(empty) / "postgres_scanner.duckdb_extension"
    link.symlink_to(packaged)
    con.execute(f"LOAD '{link}'")
    quoted = dsn.replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS pg (TYPE postgres)")
    return con


_DUCK_TYPES = {"bigint": "BIGINT", "integer": "INTEGER", "smallint": "SMALLINT",
               "text": "VARCHAR", "date": "DATE", "numeric(18,2)": "DECIMAL(18,2)"}  # fmt: skip


def duckdb_load(source_sql: str, dsn: str, table: str) -> None:
    con = duckdb_connect(dsn)
    try:
        con.execute(f"INSERT INTO pg.public.{table} SELECT * FROM {source_sql}")
    finally:
        con.close()


def duckdb_csv_source(path: str) -> str:
    cols = ", ".join(f"'{name}': '{_DUCK_TYPES[pg]}'" for name, pg, _ in SCHEMA)
    quoted = path.replace("'", "''")
    return (
        f"read_csv('{quoted}', delim='{DELIMITER}', quote='\"', header=false, "
        f"encoding='latin-1', dateformat='%Y%m%d', allow_quoted_nulls=false, "
        f"columns={{{cols}}})"
    )


def duckdb_parquet_source(path: str) -> str:
    quoted = path.replace("'", "''")
    return f"read_parquet('{quoted}')"


# --- pgpq: Arrow -> binary COPY --------------------------------------------------------


def _encoded(reader: pa.RecordBatchReader) -> tuple[Any, Iterator[bytes]]:
    """The encoder for the reader's schema, and the COPY BINARY stream (header,
    one chunk per batch, trailer)."""
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(reader.schema)

    def chunks() -> Iterator[bytes]:
        yield encoder.write_header()
        for batch in reader:
            yield encoder.write_batch(batch)
        yield encoder.finish()

    return encoder, chunks()


async def _threaded(produce: Iterator[bytes], depth: int = 4) -> AsyncIterator[bytes]:
    """Run a blocking producer in its own thread, so reading and encoding overlap COPY."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)

    def work() -> None:
        try:
            for item in produce:
                q.put(item)
            q.put(None)
        except BaseException as exc:
            q.put(exc)

    threading.Thread(target=work, daemon=True).start()
    loop = asyncio.get_running_loop()
    while (item := await loop.run_in_executor(None, q.get)) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


async def pgpq_parquet(path: str, dsn: str, table: str) -> None:
    """One binary COPY stream for the whole file, one connection."""
    _, stream = _encoded(parquet_reader(path))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_to_table(table, source=_threaded(stream), columns=list(COLUMNS),
                                 format="binary")  # fmt: skip
    finally:
        await conn.close()


def _per_batch(reader: pa.RecordBatchReader) -> Iterator[bytes]:
    """One complete COPY BINARY stream (header, rows, trailer) per record batch."""
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(reader.schema)
    header = encoder.write_header()
    for batch in reader:
        # The encoder writes one trailer and then refuses batches: write it here.
        yield header + encoder.write_batch(batch) + COPY_BINARY_TRAILER


async def _spread(
    dsn: str,
    chunks: Iterator[bytes],
    connections: int,
    setup: Callable[[asyncpg.Connection], Awaitable[None]],
    handle: Callable[[asyncpg.Connection, bytes], Awaitable[None]],
) -> None:
    """Chunks from one reading/encoding thread, loaded by `connections` connections."""
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        for conn in conns:
            await setup(conn)
        q: asyncio.Queue[bytes | None] = asyncio.Queue(connections)

        async def pump() -> None:
            try:
                async for chunk in _threaded(chunks):
                    await q.put(chunk)
            finally:  # a failed reader must not leave the workers waiting
                for _ in conns:
                    await q.put(None)

        async def work(conn: asyncpg.Connection) -> None:
            while (chunk := await q.get()) is not None:
                await handle(conn, chunk)

        await asyncio.gather(pump(), *(work(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()


async def _nothing(conn: asyncpg.Connection) -> None:
    return None


async def pgpq_parquet_spread(path: str, dsn: str, table: str, connections: int) -> None:
    """A binary COPY per batch of 100,000 rows, over `connections` connections."""

    async def handle(conn: asyncpg.Connection, chunk: bytes) -> None:
        await conn.copy_to_table(table, source=_once(chunk), columns=list(COLUMNS),
                                 format="binary")  # fmt: skip

    await _spread(dsn, _per_batch(parquet_reader(path)), connections, _nothing, handle)


async def pgpq_csv_text(path: str, dsn: str, table: str, connections: int = 1) -> None:
    """Text columns go binary as they are; PostgreSQL casts each value (one meaning):
    per batch, binary COPY into a text stage, INSERT ... SELECT with casts, COMMIT."""
    cols = ", ".join(COLUMNS)
    casts = ", ".join(f"{name}::{pg}" for name, pg, _ in SCHEMA)
    stage = "CREATE TEMP TABLE text_stage (" + ", ".join(f"{c} text" for c in COLUMNS) + ")"
    insert = f"INSERT INTO {table} ({cols}) SELECT {casts} FROM text_stage"

    async def setup(conn: asyncpg.Connection) -> None:
        await conn.execute(stage + " ON COMMIT DELETE ROWS")

    async def handle(conn: asyncpg.Connection, chunk: bytes) -> None:
        async with conn.transaction():
            await conn.copy_to_table("text_stage", source=_once(chunk), columns=list(COLUMNS),
                                     format="binary")  # fmt: skip
            await conn.execute(insert)

    await _spread(dsn, _per_batch(csv_reader(path, as_text=True)), connections, setup, handle)


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


METHODS: dict[str, Callable[[str, str, str], None]] = {
    "raw-copy": lambda f, d, t: asyncio.run(raw_copy(f, d, t)),
    "raw-upsert": lambda f, d, t: asyncio.run(raw_upsert(f, d, t)),
    "adbc-csv": lambda f, d, t: adbc_ingest(csv_reader(f), d, t),
    "adbc-parquet": lambda f, d, t: adbc_ingest(parquet_reader(f), d, t),
    "duckdb-parquet": lambda f, d, t: duckdb_load(duckdb_parquet_source(f), d, t),
    "duckdb-csv": lambda f, d, t: duckdb_load(duckdb_csv_source(f), d, t),
    "pgpq-parquet": lambda f, d, t: asyncio.run(pgpq_parquet(f, d, t)),
    "pgpq-parquet-2conn": lambda f, d, t: asyncio.run(pgpq_parquet_spread(f, d, t, 2)),
    "pgpq-csv-text": lambda f, d, t: asyncio.run(pgpq_csv_text(f, d, t)),
    "pgpq-csv-text-2conn": lambda f, d, t: asyncio.run(pgpq_csv_text(f, d, t, 2)),
}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in METHODS:
        print(__doc__, file=sys.stderr)
        return 2
    method, path, dsn, table = argv
    METHODS[method](path, dsn, table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
