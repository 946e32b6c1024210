"""The naive tuple design, as a reference point: one Python tuple per row.

csv.reader -> tuples -> asyncpg copy_records_to_table into a TEXT stage table ->
INSERT ... SELECT with casts into the typed target, one transaction per chunk.
Run as `python -m bench.naive FILE DSN TABLE [CHUNK]` so its CPU is measured like ingestd's.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from itertools import islice

import asyncpg

from bench.data import COLUMNS, DELIMITER, ENCODING, SCHEMA


async def load(path: str, dsn: str, table: str, chunk: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        cols = ", ".join(COLUMNS)
        await conn.execute(
            "CREATE TEMP TABLE naive_stage ("
            + ", ".join(f"{c} text" for c in COLUMNS)
            + ") ON COMMIT DELETE ROWS"
        )
        casts = ", ".join(f"{name}::{pg}" for name, pg, _ in SCHEMA)
        insert = f"INSERT INTO {table} ({cols}) SELECT {casts} FROM naive_stage"
        total = 0
        with open(path, encoding=ENCODING, newline="") as fh:  # noqa: ASYNC230 - naive on purpose
            reader = csv.reader(fh, delimiter=DELIMITER)
            while batch := [tuple(row) for row in islice(reader, chunk)]:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "naive_stage", records=batch, columns=list(COLUMNS)
                    )
                    await conn.execute(insert)
                total += len(batch)
        return total
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    path, dsn, table = argv[:3]
    chunk = int(argv[3]) if len(argv) > 3 else 50_000
    rows = asyncio.run(load(path, dsn, table, chunk))
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
