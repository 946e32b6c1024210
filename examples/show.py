"""Print what the demo loaded: a few rows of each example table, from the embedded server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg

from ingestd.embedded import start_embedded


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    dsn, _server = start_embedded(Path(".ingestd"))
    conn = await asyncpg.connect(dsn)
    try:
        for table in ("companies", "orders"):
            count = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
            rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY 1 LIMIT 5')
            print(f"\n{table}: {count} rows")
            if rows:
                names = list(rows[0].keys())
                print("  " + " | ".join(names))
                for row in rows:
                    print("  " + " | ".join("NULL" if v is None else str(v) for v in row.values()))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
